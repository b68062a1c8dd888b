"""Score a predictions file against a dataset: the engine of ``rrr eval score``.

Each ``DatasetItem`` is judged by ``tools.verify``: tool-call items by the chosen scorer
(``tools.scorers``: ``reference``, the default, is ``verify_reference``, BFCL AST-checker semantics
against ``item.expected`` with the item's tools; ``bfcl`` is BFCL's own verdict, quirks included;
``exact`` the paper's exact match), countdown items with ``verify_countdown`` on the prediction's
``content``, BFCL ``live_relevance`` items by whether any call was made (every scorer, as BFCL
does). A missing prediction is wrong ("no prediction"). Only ``reference`` accepts BFCL's original
dotted function names besides the offered ones.

Predictions file: JSON Lines of ``{"id", "tool_calls": [{"name", "arguments"}], "content"?}``
(arguments an object or a JSON string; OpenAI's ``{"function": {...}}`` shape works too). A line
that is not a JSON object with an id is an error naming the line; a call whose arguments do not
decode is the model's failure and is scored wrong, not an error.

This module does not run models (``evals`` does) and does not print.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.formats import DatasetItem, openai_name
from tools.scorers import check_scorer
from tools.spec import ToolCall
from tools.verify import (
    ModelOutput,
    Verdict,
    verify_bfcl,
    verify_countdown,
    verify_exact,
    verify_reference,
    verify_relevance,
)

logger = logging.getLogger(__name__)

NO_PREDICTION = "no prediction"


class PredictionsError(ValueError):
    """A predictions file that cannot be read; the message names the file and line."""


@dataclass
class ScoreReport:
    """Totals plus one ``{"id", "ok", "reason", "code", "path"}`` per dataset item, in dataset order."""

    total: int
    correct: int
    accuracy: float
    items: list[dict[str, Any]]
    categories: dict[str, dict[str, Any]] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    scorer: str = "reference"

    @property
    def failures(self) -> dict[str, int]:
        """Wrong items per failure code, biggest first."""
        codes: dict[str, int] = {}
        for row in self.items:
            if not row["ok"]:
                codes[row.get("code") or "unknown"] = codes.get(row.get("code") or "unknown", 0) + 1
        return dict(sorted(codes.items(), key=lambda kv: (-kv[1], kv[0])))

    def to_dict(self) -> dict[str, Any]:
        """The ``rrr eval score --json`` object."""
        return {
            "scorer": self.scorer,
            "total": self.total,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "failures": self.failures,
            "items": self.items,
        }


def _output_from_line(obj: dict[str, Any], where: str) -> ModelOutput:
    raw_calls = obj.get("tool_calls")
    if raw_calls is None:
        raw_calls = []
    if not isinstance(raw_calls, list):
        raise PredictionsError(f"{where}: 'tool_calls' must be a list, got {type(raw_calls).__name__}")
    content = obj.get("content")
    if content is not None and not isinstance(content, str):
        raise PredictionsError(f"{where}: 'content' must be a string or null")
    parse_error = obj.get("parse_error") if isinstance(obj.get("parse_error"), str) else None
    calls: list[ToolCall] = []
    for k, raw in enumerate(raw_calls):
        try:
            calls.append(ToolCall.from_dict(raw))
        except ValueError as exc:  # json.JSONDecodeError included: malformed arguments are model output
            return ModelOutput(tool_calls=[], content=content, parse_error=f"tool call {k}: {exc}")
    return ModelOutput(tool_calls=calls, content=content, parse_error=parse_error)


def load_predictions(path: str | Path) -> dict[str, ModelOutput]:
    """``{id: ModelOutput}`` from a predictions JSON Lines file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PredictionsError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PredictionsError(f"{p}: cannot read ({exc})") from None
    out: dict[str, ModelOutput] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}, line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PredictionsError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise PredictionsError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        raw_id = obj.get("id")
        if not isinstance(raw_id, str | int) or isinstance(raw_id, bool):
            raise PredictionsError(f"{where}: missing 'id' (a string or an integer)")
        item_id = str(raw_id)
        if item_id in out:
            raise PredictionsError(f"{where}: duplicate id {item_id!r}")
        out[item_id] = _output_from_line(obj, where)
    return out


def _as_output(value: ModelOutput | list[ToolCall]) -> ModelOutput:
    return value if isinstance(value, ModelOutput) else ModelOutput(tool_calls=list(value))


def _with_tool_names(item: DatasetItem, output: ModelOutput) -> ModelOutput:
    """Accept BFCL's original dotted names in predictions as well as the OpenAI-legal ones."""
    originals = item.extra.get("tool_names")
    if not isinstance(originals, dict) or not output.tool_calls:
        return output
    known = set(originals.values())
    calls = [ToolCall(openai_name(c.name), c.arguments, c.id) if c.name in known else c for c in output.tool_calls]
    return ModelOutput(tool_calls=calls, content=output.content, parse_error=output.parse_error)


def score_item(item: DatasetItem, output: ModelOutput | None, scorer: str = "reference") -> Verdict:
    """The verdict for one item (``output`` None: no prediction) by ``scorer`` (``tools.scorers.SCORERS``)."""
    check_scorer(scorer)
    if output is None:
        return Verdict(ok=False, reason=NO_PREDICTION, details={}, code="no_call")
    if item.task == "countdown":
        return verify_countdown(output.content or "", item.extra["nums"], item.extra["target"])
    if item.extra.get("relevance"):
        return verify_relevance(output)
    if scorer == "bfcl":
        return verify_bfcl(output, item.expected, tools=item.tools)
    if scorer == "exact":
        return verify_exact(output, item.expected, tools=item.tools)
    return verify_reference(_with_tool_names(item, output), item.expected, tools=item.tools)


def score_predictions(
    items: list[DatasetItem],
    predictions: Mapping[str, ModelOutput | list[ToolCall]] | str | Path,
    scorer: str = "reference",
) -> ScoreReport:
    """Judge every item by ``scorer``; ``predictions`` is ``{id: calls or ModelOutput}`` or a predictions file."""
    check_scorer(scorer)
    missing_truth = [i.id for i in items if i.extra.get("has_ground_truth") is False]
    if missing_truth:
        raise ValueError(
            f"{len(missing_truth)} items have no reference answers (first: {missing_truth[0]}); "
            "give the BFCL possible_answer file"
        )
    preds = load_predictions(predictions) if isinstance(predictions, str | Path) else predictions
    rows: list[dict[str, Any]] = []
    categories: dict[str, dict[str, Any]] = {}
    for item in items:
        raw = preds.get(item.id)
        verdict = score_item(item, _as_output(raw) if raw is not None else None, scorer)
        row = {"id": item.id, "ok": verdict.ok, "reason": verdict.reason, "code": verdict.code, "path": verdict.path}
        rows.append(row)
        if item.category is not None:
            cat = categories.setdefault(item.category, {"total": 0, "correct": 0, "accuracy": 0.0})
            cat["total"] += 1
            cat["correct"] += int(verdict.ok)
    for cat in categories.values():
        cat["accuracy"] = cat["correct"] / cat["total"]
    known = {i.id for i in items}
    unmatched = [k for k in preds if k not in known]
    if unmatched:
        logger.warning("%d predictions match no dataset item (first: %s)", len(unmatched), unmatched[0])
    correct = sum(1 for r in rows if r["ok"])
    total = len(rows)
    return ScoreReport(
        total=total,
        correct=correct,
        accuracy=correct / total if total else 0.0,
        items=rows,
        categories=dict(sorted(categories.items())),
        unmatched=unmatched,
        scorer=scorer,
    )
