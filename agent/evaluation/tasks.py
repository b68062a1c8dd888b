"""How a dataset item is asked and judged in an evaluation: the request, the verifier, the score.

Who calls it: the evaluation runners (``agent.evaluation.runners``) to build each request, and the
harness to score every answer attempt. Serving and scoring use the same rules as the learner's
miner: countdown items are judged by the countdown verifier and reflect with the paper's math
prompt; tool-call items by the reference verifier (BFCL AST semantics) against the item's expected
calls; BFCL ``live_relevance`` items (any call is right) by the schema verifier while serving (which
does not demand a call, so an answer without one is scored wrong but not retried). The
final score of every attempt is always ``tools.score.score_item``, the reference scorer of
``rrr eval score``, so both commands agree on what "correct" means.

This module runs no model and does no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tools.formats import DatasetItem
from tools.parse import parse_openai_tool_calls
from tools.score import score_item
from tools.verify import ModelOutput, Verdict, normalize_spec


@dataclass(frozen=True)
class EvalTask:
    """One dataset item as rrr is asked it: messages, OpenAI tools, and the rrr extension fields."""

    item: DatasetItem
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    verifier: dict[str, Any]
    expected: list[dict[str, Any]] | None
    math: bool

    @property
    def id(self) -> str:
        return self.item.id

    def extension(self, attempts: int, *, task: str | None = None) -> dict[str, Any]:
        """The ``rrr`` object of the request: verifier, reference answer, retry budget, attempt trace."""
        ext: dict[str, Any] = {"verifier": self.verifier, "max_retries": attempts - 1, "include_attempts": True,
                               "task": task or self.item.task}
        if self.expected is not None:
            ext["expected_tool_calls"] = self.expected
        return ext


def eval_task(item: DatasetItem) -> EvalTask:
    """The request and serving-time verifier of one item; ValueError if rrr cannot verify it."""
    tools = [tool.to_openai() for tool in item.tools] or None
    expected: list[dict[str, Any]] | None
    if item.task == "countdown":
        raw: dict[str, Any] = {"type": "countdown", "nums": item.extra.get("nums"), "target": item.extra.get("target")}
        expected, math = None, True
    elif item.extra.get("relevance"):
        raw, expected, math = {"type": "schema"}, None, False
    else:
        raw, expected, math = {"type": "reference"}, list(item.expected), False
    try:
        verifier = normalize_spec(raw)
    except ValueError as exc:
        raise ValueError(f"item {item.id}: {exc}") from None
    return EvalTask(item=item, messages=list(item.messages), tools=tools, verifier=verifier, expected=expected,
                    math=math)


def eval_tasks(items: Sequence[DatasetItem]) -> list[EvalTask]:
    """Every item as an ``EvalTask``; ValueError for items that cannot be judged (no reference answers)."""
    missing = [i.id for i in items if i.extra.get("has_ground_truth") is False]
    if missing:
        raise ValueError(f"{len(missing)} items have no reference answers (first: {missing[0]}); "
                         "give the BFCL possible_answer file with --answers")
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ValueError(f"the dataset has two items with id {item.id!r}; ids must be unique to score and resume")
        seen.add(item.id)
    return [eval_task(item) for item in items]


def model_output(message: dict[str, Any], finish_reason: str | None) -> ModelOutput:
    """An assistant message parsed strictly, as the agent loop parses it (a cut-off answer is malformed)."""
    calls, parse_error = parse_openai_tool_calls(message.get("tool_calls"), message.get("content"))
    if finish_reason == "length":
        parse_error = parse_error or "the output was cut off at max_tokens (finish_reason=length)"
    content = message.get("content")
    return ModelOutput(tool_calls=calls, content=content if isinstance(content, str) else None,
                       parse_error=parse_error)


def score_answer(task: EvalTask, message: dict[str, Any], finish_reason: str | None) -> Verdict:
    """The reference score of one answer attempt (``rrr eval score``'s rules)."""
    return score_item(task.item, model_output(message, finish_reason))
