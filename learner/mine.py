"""Offline failure mining (paper §4.3): sample answers to a dataset's queries, keep what fails.

Called by `rrr learn mine`. For every dataset item, up to `samples` answers are drawn at a
temperature above 0 from the engine (one model call each, no reflection) and judged by the item's
verifier exactly as `rrr eval` judges it (`evals.items.eval_task`: `reference` with the dataset's
expected calls, `relevance` for BFCL live_relevance items, `countdown` for countdown items).
Sampling stops at the first failure. Stored, through `store.repos.record_episodes`:

* a query with a failed sample: that failure, as a `failed` episode made trainable by its
  re-runnable verifier and the dataset's expected calls (training data);
* a query whose every sample passed: one `first_ok` episode (the regression set of past successes).

So a query is never both training data and regression data. Engine failures are counted and
skipped, never stored as model failures. This module does not train and does not print (the CLI
draws the progress bar from `on_item`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.orm import Session

from agent.loop import LoopConfig, Outcome, run_episode
from agent.record import outcome_to_record
from engines.base import ChatRequest, Engine
from evals.items import eval_task
from store import repos
from store.records import EpisodeRecord
from tools.formats import DatasetItem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MineConfig:
    """How to sample.

    samples: answers drawn per query at most (the paper used up to 64).
    temperature: sampling temperature; must be above 0, or every sample is the same answer.
    max_tokens: cap per answer. concurrency: queries sampled at once.
    model: adapter name to sample from (None: the engine's base model).
    task: tag stored on every episode (None: the item's own task, e.g. tool_call or countdown).
    seed: base seed; sample k of item i uses seed + 1000 * i + k, so runs are repeatable.
    batch_size: episodes written per transaction.
    """

    samples: int = 8
    temperature: float = 1.0
    max_tokens: int = 256
    concurrency: int = 4
    model: str | None = None
    task: str | None = "mined"
    seed: int | None = None
    batch_size: int = 50
    deadline_s: float = 120.0

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"--samples must be at least 1, got {self.samples}")
        if not self.temperature > 0:
            raise ValueError(f"mining needs a temperature above 0 to draw different answers, got {self.temperature}")
        if self.concurrency < 1 or self.max_tokens < 1 or self.batch_size < 1:
            raise ValueError("concurrency, max_tokens and batch_size must be at least 1")


@dataclass
class MineSummary:
    """Counts of one mining run (the `--json` output of `rrr learn mine`)."""

    queries: int = 0
    samples: int = 0
    failures_stored: int = 0
    successes_stored: int = 0
    queries_with_failure: int = 0
    queries_all_ok: int = 0
    engine_errors: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def item_request(item: DatasetItem, config: MineConfig, seed: int | None) -> ChatRequest:
    tools = [t.to_openai() for t in item.tools] or None
    return ChatRequest(
        messages=item.messages,
        model=config.model,
        tools=tools,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        seed=seed,
    )


async def _mine_item(
    engine: Engine, item: DatasetItem, index: int, config: MineConfig, summary: MineSummary
) -> EpisodeRecord | None:
    options = eval_task(item).options(max_retries=0, task=config.task)
    loop = LoopConfig(max_calls=1, deadline_s=config.deadline_s)
    first_ok: tuple[Outcome, ChatRequest] | None = None
    for k in range(config.samples):
        seed = None if config.seed is None else config.seed + 1000 * index + k
        request = item_request(item, config, seed)
        outcome = await run_episode(engine, request, options, loop)
        if outcome.status == "upstream_error" or outcome.error is not None:
            summary.engine_errors += 1
            continue
        summary.samples += 1
        if outcome.status != "first_ok":
            summary.queries_with_failure += 1
            return outcome_to_record(outcome, request, options, adapter=config.model, client_key_id=None)
        first_ok = first_ok or (outcome, request)
    if first_ok is None:  # every sample hit an engine error: nothing known about this query
        return None
    summary.queries_all_ok += 1
    return outcome_to_record(first_ok[0], first_ok[1], options, adapter=config.model, client_key_id=None)


def _store(session_factory: Callable[[], Session], records: list[EpisodeRecord], summary: MineSummary) -> None:
    with session_factory() as session, session.begin():
        repos.record_episodes(session, records)
    for record in records:
        if record.status == "first_ok":
            summary.successes_stored += 1
        else:
            summary.failures_stored += 1


async def mine_dataset(
    items: Sequence[DatasetItem],
    engine: Engine,
    session_factory: Callable[[], Session],
    config: MineConfig = MineConfig(),
    *,
    on_item: Callable[[MineSummary], None] | None = None,
) -> MineSummary:
    """Sample, verify and store (module docstring); returns the counts."""
    summary = MineSummary(queries=len(items))
    limit = asyncio.Semaphore(config.concurrency)
    pending: list[EpisodeRecord] = []
    lock = asyncio.Lock()

    async def one(index: int, item: DatasetItem) -> None:
        async with limit:
            record = await _mine_item(engine, item, index, config, summary)
        async with lock:
            if record is not None:
                pending.append(record)
            if len(pending) >= config.batch_size:
                batch = pending[:]
                pending.clear()
                await asyncio.to_thread(_store, session_factory, batch, summary)
            if on_item is not None:
                on_item(summary)

    await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
    if pending:
        await asyncio.to_thread(_store, session_factory, pending, summary)
    log.info(
        "mined %d queries: %d failures and %d successes stored",
        summary.queries,
        summary.failures_stored,
        summary.successes_stored,
    )
    return summary
