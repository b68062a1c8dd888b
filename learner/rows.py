"""Training rows on their way to TRL: the row type, its encoding for a datasets/Arrow table, its file.

Who calls it: `learner.dataset` (builds `FailureRow`s from the store), the cycle (`write_rows`
before training), `learner.train` (`read_rows`, `render_rows`) and `learner.reward`
(`render_messages`, `decode_row`). Prompts are rendered with the tokenizer's own chat template
and `tools=`, exactly as `LocalEngine.render_prompt` (and vLLM's chat endpoint) renders them.

No database, no torch: a tokenizer is passed in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypedDict

from engines.wire import normalize_messages


class FailureRow(TypedDict):
    """One training (or evaluation) row. Plain JSON values only."""

    episode_id: str
    client_key_id: str | None
    task_messages: list[dict[str, Any]]
    """The client's original request messages (first-attempt evaluation re-asks these)."""
    prompt_messages: list[dict[str, Any]]
    """Task + failed first attempt + reflection request: the GRPO prompt. Empty for regression rows
    (they succeeded first time; there is nothing to reflect on)."""
    tools: list[dict[str, Any]] | None
    """The request's tools, OpenAI format."""
    tool_choice: Any
    """The request's tool_choice as sent (None = the default: auto with tools, none without)."""
    verifier: dict[str, Any]
    """Normalised verifier spec (`tools.verify.normalize_spec`)."""
    expected: list[dict[str, Any]] | None
    """Reference calls for `reference` verifiers (feedback's expected calls win), else None."""


FAILURE_ROW_COLUMNS = (
    "episode_id",
    "client_key_id",
    "task_messages",
    "prompt_messages",
    "tools",
    "tool_choice",
    "verifier",
    "expected",
)
#: Columns `render_rows` stores as JSON text (TRL/Arrow cannot hold per-row schemas of varying shape).
JSON_COLUMNS = ("task_messages", "prompt_messages", "tools", "tool_choice", "verifier", "expected")


def render_messages(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    """The chat template's prompt text, exactly as `LocalEngine.render_prompt` renders it."""
    text = tokenizer.apply_chat_template(
        normalize_messages(messages), tools=tools or None, add_generation_prompt=True, tokenize=False
    )
    return str(text)


def render_rows(rows: Iterable[FailureRow | dict[str, Any]], tokenizer: Any) -> list[dict[str, Any]]:
    """Rows for TRL: `prompt` = the rendered reflection prompt (a string, so TRL applies no template
    of its own); every other column kept, structured ones as JSON text (`JSON_COLUMNS`), because
    TRL hands each dataset column except `prompt` to the reward function and Arrow cannot store
    per-row tool schemas of different shapes. `decode_row` undoes the encoding."""
    out = []
    for row in rows:
        if not row.get("prompt_messages"):
            raise ValueError(f"row {row.get('episode_id')!r} has no prompt_messages (regression rows do not train)")
        rendered: dict[str, Any] = {"prompt": render_messages(tokenizer, row["prompt_messages"], row.get("tools"))}
        for column in FAILURE_ROW_COLUMNS:
            value = row.get(column)
            rendered[column] = json.dumps(value, ensure_ascii=False) if column in JSON_COLUMNS else value
        out.append(rendered)
    return out


def decode_row(columns: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `render_rows`' encoding for one row's columns (values already decoded pass through)."""
    out = dict(columns)
    for column in JSON_COLUMNS:
        value = out.get(column)
        if isinstance(value, str):
            out[column] = json.loads(value)
    return out


def write_rows(path: str | Path, rows: Iterable[FailureRow | dict[str, Any]]) -> Path:
    """Write rows as JSON lines, atomically (temp file, fsync, rename). Returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows written by `write_rows`."""
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
