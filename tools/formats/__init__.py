"""Dataset formats: xLAM/APIGen, BFCL, our OpenAI JSON Lines, and countdown, as ``DatasetItem``s.

The import point for every caller (``rrr eval score``, ``rrr tools convert``, the learner's
offline miner). ``load_dataset("xlam:path")`` picks the converter; each format lives in its own
module with its rules in the docstring. Converters never verify calls (``tools.verify`` does) and
raise ``DatasetError`` (a ``ValueError``) naming the file, the line or record and the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tools.formats.bfcl import (
    bfcl_category,
    convert_bfcl_function,
    convert_bfcl_functions,
    convert_ground_truth,
    load_bfcl,
    load_bfcl_answers,
    load_bfcl_tools,
    openai_name,
)
from tools.formats.countdown import countdown_item, load_countdown
from tools.formats.item import DatasetError, DatasetItem, dedupe_tools
from tools.formats.openai_chat import convert_expected, load_openai, load_openai_tools
from tools.formats.types import TypeInfo, normalize_schema, parse_type
from tools.formats.xlam import (
    coerce_value,
    convert_xlam_answers,
    convert_xlam_messages,
    convert_xlam_record,
    convert_xlam_tool,
    convert_xlam_tools,
    load_xlam,
    load_xlam_tools,
)
from tools.spec import ToolSpec

FORMATS = ("xlam", "bfcl", "openai", "countdown")
TOOL_FORMATS: dict[str, Callable[[str | Path], list[ToolSpec]]] = {
    "xlam": load_xlam_tools,
    "bfcl": load_bfcl_tools,
    "openai": load_openai_tools,
}

__all__ = [
    "FORMATS",
    "TOOL_FORMATS",
    "DatasetError",
    "DatasetItem",
    "TypeInfo",
    "bfcl_category",
    "coerce_value",
    "convert_bfcl_function",
    "convert_bfcl_functions",
    "convert_expected",
    "convert_ground_truth",
    "convert_tools",
    "convert_xlam_answers",
    "convert_xlam_messages",
    "convert_xlam_record",
    "convert_xlam_tool",
    "convert_xlam_tools",
    "countdown_item",
    "dedupe_tools",
    "load_bfcl",
    "load_bfcl_answers",
    "load_countdown",
    "load_dataset",
    "load_openai",
    "load_xlam",
    "normalize_schema",
    "openai_name",
    "parse_type",
    "split_spec",
]


def split_spec(spec: str) -> tuple[str, str]:
    """``"xlam:data/x.json"`` -> ``("xlam", "data/x.json")``; a clear error for anything else."""
    fmt, sep, path = spec.partition(":")
    if not sep or not path:
        raise DatasetError(f"dataset {spec!r} must be FORMAT:PATH with FORMAT one of {', '.join(FORMATS)}")
    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {fmt!r} (expected one of {', '.join(FORMATS)})")
    return fmt, path


def load_dataset(spec: str, answers: str | Path | None = None) -> list[DatasetItem]:
    """Load ``FORMAT:PATH``; ``answers`` is BFCL's possible_answer file (other formats reject it)."""
    fmt, path = split_spec(spec)
    if answers is not None and fmt != "bfcl":
        raise DatasetError(f"an answers file only applies to the bfcl format, not {fmt!r}")
    if fmt == "bfcl":
        return load_bfcl(path, answers)
    if fmt == "xlam":
        return load_xlam(path)
    if fmt == "openai":
        return load_openai(path)
    return load_countdown(path)


def convert_tools(fmt: str, path: str | Path) -> list[ToolSpec]:
    """All tools of a dataset file, deduplicated by (name, schema hash), in first-seen order."""
    loader = TOOL_FORMATS.get(fmt.strip().lower())
    if loader is None:
        raise DatasetError(f"cannot convert tools from {fmt!r} (expected one of {', '.join(TOOL_FORMATS)})")
    return dedupe_tools(loader(path))
