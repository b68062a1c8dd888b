"""What an item asks and how it is judged: the one definition for `rrr eval`, mining and the gate.

* `eval_task`: a dataset item as a request and its verifier spec. Countdown items are judged by
  the countdown verifier and reflect with the paper's math prompt; BFCL ``live_relevance`` items
  (any well-formed call is right) by the ``relevance`` verifier; every other tool-call item by the
  reference verifier (BFCL AST semantics) against the item's expected calls. `rrr eval run` sends
  these specs, `rrr learn mine` stores them on the episodes it records, and so the gate, which
  re-runs the stored spec, judges mined items exactly as they were judged when mined.
* `score_answer`: the final score of an attempt, always ``tools.score.score_item`` (the scorer of
  ``rrr eval score``), which applies the same rules to the same items; by the ``reference`` scorer
  unless another is asked for (``tools.scorers``: ``bfcl``, ``exact``). The serving-time verifier
  that drives reflection stays ``reference`` whatever the scorer.
* `EvalItem` / `gate_item`: a stored episode (a dataset row of the learner) as an item to re-run.

This module runs no model and does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.loop import TaskOptions
from tools.formats import DatasetItem
from tools.parse import parse_openai_tool_calls
from tools.score import score_item
from tools.verify import ModelOutput, Verdict, VerifierSpec


@dataclass(frozen=True)
class EvalTask:
    """One dataset item as rrr is asked it: messages, OpenAI tools, and the rrr extension fields."""

    item: DatasetItem
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    verifier: VerifierSpec
    expected: list[dict[str, Any]] | None

    @property
    def math(self) -> bool:
        return self.verifier.math

    @property
    def id(self) -> str:
        return self.item.id

    def options(self, *, max_retries: int, task: str | None = None) -> TaskOptions:
        """How the loop judges this item when it runs in this process (mining, the in-process runner)."""
        return TaskOptions(
            verifier=self.verifier, expected=self.expected, task=task or self.item.task, max_retries=max_retries
        )

    def extension(self, attempts: int, *, task: str | None = None, purpose: str = "eval") -> dict[str, Any]:
        """The ``rrr`` object of the request: verifier, reference answer, retry budget, attempt trace,
        and the purpose (``eval`` by default: the server stores the episode but never trains on it)."""
        ext: dict[str, Any] = {
            "verifier": self.verifier.to_json(),
            "max_retries": attempts - 1,
            "include_attempts": True,
            "task": task or self.item.task,
            "purpose": purpose,
        }
        if self.expected is not None:
            ext["expected_tool_calls"] = self.expected
        return ext


def eval_task(item: DatasetItem) -> EvalTask:
    """The request and serving-time verifier of one item; ValueError if rrr cannot verify it."""
    tools = [tool.to_openai() for tool in item.tools] or None
    expected: list[dict[str, Any]] | None
    if item.task == "countdown":
        raw: dict[str, Any] = {"type": "countdown", "nums": item.extra.get("nums"), "target": item.extra.get("target")}
        expected = None
    elif item.extra.get("relevance"):
        raw, expected = {"type": "relevance"}, None
    else:
        raw, expected = {"type": "reference"}, list(item.expected)
    try:
        verifier = VerifierSpec.parse(raw)
    except ValueError as exc:
        raise ValueError(f"item {item.id}: {exc}") from None
    return EvalTask(item=item, messages=list(item.messages), tools=tools, verifier=verifier, expected=expected)


def eval_tasks(items: Sequence[DatasetItem]) -> list[EvalTask]:
    """Every item as an ``EvalTask``; ValueError for items that cannot be judged (no reference answers)."""
    missing = [i.id for i in items if i.extra.get("has_ground_truth") is False]
    if missing:
        raise ValueError(
            f"{len(missing)} items have no reference answers (first: {missing[0]}); "
            "give the BFCL possible_answer file with --answers"
        )
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
    return ModelOutput(tool_calls=calls, content=content if isinstance(content, str) else None, parse_error=parse_error)


def score_answer(
    task: EvalTask, message: dict[str, Any], finish_reason: str | None, scorer: str = "reference"
) -> Verdict:
    """The score of one answer attempt by ``scorer`` (``rrr eval score``'s rules)."""
    return score_item(task.item, model_output(message, finish_reason), scorer)


@dataclass(frozen=True)
class EvalItem:
    """A stored task to re-run: its task messages (no failed attempt), tools, and how to judge it."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    verifier: VerifierSpec | str | dict[str, Any] = "schema"
    """As stored; parsed when the item runs, so one whose spec no longer validates fails alone."""
    expected: list[dict[str, Any]] | None = None
    id: str | None = None


def gate_item(row: Any) -> EvalItem:
    """An `EvalItem` from a learner dataset row (object or mapping with `task_messages` or `messages`)."""

    def get(key: str) -> Any:
        return row.get(key) if isinstance(row, Mapping) else getattr(row, key, None)

    messages = get("task_messages") or get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("a gate item needs its task messages")
    return EvalItem(
        messages=list(messages),
        tools=get("tools") or None,
        tool_choice=get("tool_choice"),
        verifier=get("verifier") or "schema",
        expected=get("expected"),
        id=get("episode_id") or get("id"),
    )
