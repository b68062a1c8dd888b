"""Items x policies through rrr's reflect/retry loop: the one way every caller measures a policy.

* `run_evaluation` (``rrr eval run``): for each (model, dataset item) not yet in the output folder
  it asks the runner for one episode, scores each answer attempt with the run's scorer
  (``EvalConfig.scorer``: ``reference``, ``bfcl`` or ``exact``, see ``tools.scorers``; kept in
  ``run.json`` so a resumed run scores alike), and appends the result to ``items.jsonl`` at once,
  so an interrupted run resumes where it stopped. At the end it writes the summary, the table and the chart over
  everything the folder holds for these items. Items the target could not run (``ItemError``) are
  reported, not written: the next run with the same ``--out`` retries them. A ``TargetError``
  stops the run (results so far are kept).
* `run_items` (the learner's gate, the demo): stored items through ``agent.loop.run_episode`` on an
  engine in this process, greedy, one reflection and one retry; one episode status per item, in
  order, so two policies run on the same items compare item by item (`evals.stats`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.loop import LoopConfig, Outcome, TaskOptions, run_episode
from engines.base import ChatRequest, Engine
from evals.items import EvalItem, EvalTask
from evals.report import Reports, summarize, write_reports
from evals.results import EvalOutput, ItemResult, score_trace
from evals.runners import ItemError, Runner, TargetError
from tools.scorers import check_scorer
from tools.verify import VerifierSpec

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class EvalConfig:
    """attempts: answer attempts per item (2 = the paper's first try and retry after reflection).
    concurrency: items in flight at once (the server batches them; a local engine queues them).
    scorer: how each attempt is scored (``tools.scorers.SCORERS``); None = the output folder's, or
    ``reference`` for a new folder."""

    attempts: int = 2
    concurrency: int = 4
    scorer: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= MAX_ATTEMPTS:
            raise ValueError(
                f"--attempts must be between 1 and {MAX_ATTEMPTS} (2 = first try and one retry), got {self.attempts}"
            )
        if self.concurrency < 1:
            raise ValueError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.scorer is not None:
            check_scorer(self.scorer)


@dataclass
class EvalRun:
    """What a run did: results of the selected items (old and new), the failures, the files."""

    summary: dict[str, Any]
    results: list[ItemResult]
    new: int
    resumed: int
    errors: list[tuple[str, str, str]] = field(default_factory=list)
    """(model, item id, message) of items that could not be run this time."""
    reports: Reports | None = None


async def run_evaluation(  # noqa: C901 (resume bookkeeping and the worker pool read best in one place)
    tasks: Sequence[EvalTask],
    runner: Runner,
    models: Sequence[str],
    out_dir: str | Path,
    *,
    dataset: str,
    config: EvalConfig = EvalConfig(),
    on_start: Callable[[int, int], None] | None = None,
    on_item: Callable[[ItemResult | None], None] | None = None,
) -> EvalRun:
    """Evaluate ``tasks`` on each of ``models``; see the module docstring.

    ``on_start(todo, resumed)`` is called once the output folder is read; ``on_item`` after every
    item (None for an item that could not be run). Raises ``TargetError`` and ``OutputError``.
    """
    if not models:
        raise ValueError("no model names to evaluate")
    if len(set(models)) != len(models):
        raise ValueError("each --model-name may be given once")
    output = EvalOutput(out_dir)
    existing = output.open({"dataset": dataset, "attempts": config.attempts, "scorer": config.scorer})
    scorer = str(output.manifest["scorer"])
    ids = [t.id for t in tasks]
    wanted = set(ids)
    done = {(r.model, r.id) for r in existing}
    todo = [(m, t) for m in models for t in tasks if (m, t.id) not in done]
    resumed = sum(1 for m in models for i in ids if (m, i) in done)
    if on_start is not None:
        on_start(len(todo), resumed)
    results = list(existing)
    errors: list[tuple[str, str, str]] = []
    fatal: list[TargetError] = []
    if todo:
        await runner.start(sorted({m for m, _ in todo}, key=list(models).index))
        jobs = iter(todo)

        async def worker() -> None:
            for model, task in jobs:
                if fatal:
                    return
                try:
                    trace = await runner.run(task, model, config.attempts)
                except TargetError as exc:
                    fatal.append(exc)
                    return
                except ItemError as exc:
                    errors.append((model, task.id, str(exc)))
                    log.warning("item %s on %s could not be run: %s", task.id, model, exc)
                    if on_item is not None:
                        on_item(None)
                    continue
                result = score_trace(task, model, trace, config.attempts, scorer)
                output.append(result, config.attempts)
                results.append(result)
                if on_item is not None:
                    on_item(result)

        await asyncio.gather(*(worker() for _ in range(min(config.concurrency, len(todo)))))
        if fatal:
            raise fatal[0]
    # Report every model the folder holds results for (an earlier run's adapter next to this one's).
    names = list(dict.fromkeys([*(r.model for r in existing if r.id in wanted), *models]))
    summary = summarize(
        results,
        models=names,
        item_ids=ids,
        attempts=config.attempts,
        dataset=dataset,
        target=runner.target,
        scorer=scorer,
    )
    reports = write_reports(output.folder, summary)
    selected = [r for r in results if r.id in wanted]
    return EvalRun(
        summary=summary,
        results=selected,
        new=len(results) - len(existing),
        resumed=resumed,
        errors=errors,
        reports=reports,
    )


async def run_outcomes(
    engine: Engine,
    model: str | None,
    items: Sequence[EvalItem],
    *,
    max_tokens: int = 256,
    concurrency: int = 4,
    loop: LoopConfig | None = None,
    on_item: Callable[[], None] | None = None,
) -> list[Outcome | None]:
    """Each item through the loop on `model` (an adapter name on `engine`; None = the base model),
    greedy, with one reflection and one retry; the outcomes in item order. None: the item's stored
    spec no longer validates, so it cannot be judged (it counts as failed)."""
    limit = asyncio.Semaphore(concurrency)
    config = loop or LoopConfig()

    async def one(item: EvalItem) -> Outcome | None:
        async with limit:
            request = ChatRequest(
                messages=item.messages,
                model=model,
                tools=item.tools,
                tool_choice=item.tool_choice,
                temperature=0.0,
                max_tokens=max_tokens,
            )
            try:
                options = TaskOptions(verifier=VerifierSpec.parse(item.verifier), expected=item.expected, max_retries=1)
                return await run_episode(engine, request, options, config)
            except ValueError as exc:
                log.warning("item %s could not be judged: %s", item.id, exc)
                return None
            finally:
                if on_item is not None:
                    on_item()

    return list(await asyncio.gather(*(one(item) for item in items)))


def outcome_status(outcome: Outcome | None) -> str:
    """`first_ok`, `retry_ok`, `failed`, or `upstream_error` when the engine failed to serve the item."""
    if outcome is None:
        return "failed"
    return "upstream_error" if outcome.error is not None and outcome.status == "failed" else outcome.status


async def run_items(
    engine: Engine,
    model: str | None,
    items: Sequence[EvalItem],
    *,
    max_tokens: int = 256,
    concurrency: int = 4,
    loop: LoopConfig | None = None,
    on_item: Callable[[], None] | None = None,
) -> list[str]:
    """`run_outcomes` as one `outcome_status` per item, in order: two policies run on the same items
    compare item by item."""
    outcomes = await run_outcomes(
        engine, model, items, max_tokens=max_tokens, concurrency=concurrency, loop=loop, on_item=on_item
    )
    return [outcome_status(o) for o in outcomes]
