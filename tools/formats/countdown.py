"""Countdown arithmetic problems (TinyZero style): JSON Lines of ``{"nums": [...], "target": N}``.

Each becomes a user prompt asking for an equation inside ``<answer>...</answer>``; there is no
tool call to expect, so ``expected`` is ``[]`` and ``extra`` carries ``nums``/``target`` for
``tools.verify.verify_countdown``. The id is the record's ``id`` if present, else its index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.formats.item import DatasetError, DatasetItem, read_jsonl, require_object

PROMPT = (
    "Using the numbers {nums}, write an equation that equals {target}. You may use +, -, * and / "
    "and parentheses, and each number exactly once. Think it through, then give only the equation "
    "inside <answer></answer> tags, for example <answer>(1 + 2) / 3</answer>."
)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def countdown_item(nums: list[int], target: int, item_id: str) -> DatasetItem:
    content = PROMPT.format(nums=list(nums), target=target)
    return DatasetItem(
        id=item_id,
        messages=[{"role": "user", "content": content}],
        task="countdown",
        extra={"nums": list(nums), "target": target},
    )


def convert_countdown_record(obj: dict[str, Any], index: int, where: str) -> DatasetItem:
    nums: Any = obj.get("nums")
    target: Any = obj.get("target")
    if not isinstance(nums, list) or not nums or not all(_is_number(n) for n in nums):
        raise DatasetError(f"{where}: 'nums' must be a non-empty list of numbers")
    if not _is_number(target):
        raise DatasetError(f"{where}: 'target' must be a number")
    item_id = str(obj["id"]) if obj.get("id") is not None else str(index)
    return countdown_item(nums, target, item_id)


def load_countdown(path: str | Path) -> list[DatasetItem]:
    return [convert_countdown_record(require_object(rec), i, rec.where) for i, rec in enumerate(read_jsonl(path))]
