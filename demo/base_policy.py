"""The demo's base policy: build it reproducibly, find it, and measure it the way the product serves.

Who calls it: ``rrr demo build-policy`` / ``rrr demo eval-policy``, the demo orchestration (before
and after the learner cycle), tests.

* ``build_policy`` trains the policy (``demo.sft``) into a temporary folder next to the
  target, keeps only the files a server needs (safetensors, tokenizer, chat template, configs,
  ``sft.json`` with the recipe) and renames it into place, so a half-built policy is never seen.
  ``policy_recipe`` reads that recipe back; ``held_out_items`` gives the tasks a recipe never
  trained on (pass the policy's recipe, or the held-out set may overlap its training set).
* ``evaluate_policy`` sends tasks through the real reflect/retry loop (``evals.run.run_outcomes``)
  on a ``LocalEngine`` with the reference verifier, greedy, one reflection and one retry, and
  reports first-attempt success, success after reflection and retry, and the share of first-attempt
  failures the retry rescued, each with a 95% Wilson interval, plus per-tool numbers.

The shipped policy lives in ``demo/policy`` at the repository root (``SHIPPED_POLICY``).
Not here: the training itself (``demo.sft``), serving over HTTP and the learner cycle
(``demo.run``). torch/transformers load only inside ``LocalEngine`` and the trainer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.loop import LoopConfig, Outcome
from demo.corpus import DemoItem, generate_items, split_items
from demo.report import rate_dict
from demo.sft import SFTConfig, SFTResult, train_policy
from engines.local import LocalEngine
from evals.items import EvalItem
from evals.run import run_outcomes
from evals.stats import status_rates

log = logging.getLogger(__name__)

SHIPPED_POLICY = Path(__file__).resolve().parent / "policy"
POLICY_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "sft.json",
)
EVAL_LOOP = LoopConfig(max_calls=3, deadline_s=120.0, reflection_max_tokens=32)
"""The loop settings of every demo measurement: one reflection, one retry, paper prompt, no reason."""


def build_policy(
    out_dir: str | Path, config: SFTConfig = SFTConfig(), *, num_threads: int | None = None, progress: bool = True
) -> SFTResult:
    """Train the policy and move it into ``out_dir`` atomically (an existing policy is replaced)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        result = train_policy(work / "train", config, num_threads=num_threads, progress=progress)
        final = work / "policy"
        final.mkdir()
        for name in POLICY_FILES:
            shutil.copy2(work / "train" / name, final / name)
        if out.exists():
            shutil.rmtree(out)
        final.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.out_dir = out
    return result


def policy_size_bytes(policy_dir: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(policy_dir).iterdir() if p.is_file())


def policy_recipe(policy_dir: str | Path) -> SFTConfig:
    """The SFTConfig a policy was built with (its ``sft.json``); the defaults if it has none."""
    meta = Path(policy_dir) / "sft.json"
    if not meta.is_file():
        return SFTConfig()
    return SFTConfig.from_json(json.loads(meta.read_text(encoding="utf-8"))["config"])


def held_out_items(n: int, config: SFTConfig = SFTConfig()) -> list[DemoItem]:
    """``n`` held-out tasks of the policy built with ``config``: no query of its training set.

    Balanced over the tools, and the first ``k`` of ``n`` are the ``k`` tasks ``held_out_items(k)`` gives.
    """
    return split_items(config.n_train_items, n, config.seed, group_size=config.group_size)[1]


def demo_splits(
    policy_dir: str | Path, n_train: int, n_held_out: int, *, seed: int = 0
) -> tuple[list[DemoItem], list[DemoItem]]:
    """(traffic, held-out tasks) for the policy in ``policy_dir``.

    The held-out tasks are ``held_out_items`` of the policy's own recipe (never trained on); the
    traffic comes from another seed and shares no query with them, so the learner never trains on
    a task it is then measured on.
    """
    held_out = held_out_items(n_held_out, policy_recipe(policy_dir))
    traffic = generate_items(
        n_train, seed=10_000 + seed, prefix="traffic", exclude_queries={item.query for item in held_out}
    )
    return traffic, held_out


def _as_item(item: DemoItem | dict[str, Any]) -> tuple[str, EvalItem]:
    if isinstance(item, DemoItem):
        return item.name, EvalItem(
            messages=item.messages, tools=item.tools, verifier="reference", expected=item.expected, id=item.id
        )
    return str(item.get("category") or "all"), EvalItem(
        messages=item["messages"],
        tools=item["tools"],
        verifier="reference",
        expected=item["expected_tool_calls"],
        id=str(item.get("id")),
    )


async def evaluate_items(
    engine: Any,
    items: Sequence[DemoItem | dict[str, Any]],
    *,
    model: str | None = None,
    max_tokens: int = 128,
    loop: LoopConfig = EVAL_LOOP,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every item through the loop on ``engine`` (any Engine; ``evals.run``) and summarise the outcomes."""
    from tqdm.auto import tqdm

    tagged = [_as_item(item) for item in items]
    with tqdm(total=len(tagged), desc="evaluating", unit="task", disable=not progress) as bar:
        results = await run_outcomes(
            engine,
            model,
            [item for _, item in tagged],
            max_tokens=max_tokens,
            concurrency=1,
            loop=loop,
            on_item=lambda: bar.update(1),
        )
    outcomes = [
        (str(item.id), tag, outcome)
        for (tag, item), outcome in zip(tagged, results, strict=True)
        if outcome is not None
    ]
    return summarize(outcomes)


def summarize(outcomes: Sequence[tuple[str, str, Outcome]]) -> dict[str, Any]:
    """first_attempt, after_retry and retry_rescued rates with Wilson intervals, overall and per tag."""

    def rates(rows: Sequence[tuple[str, str, Outcome]]) -> dict[str, Any]:
        found = status_rates(o.status for _, _, o in rows)
        return {
            "n": len(rows),
            **{key: rate_dict(rate) for key, rate in found.items()},
            "engine_errors": sum(o.error is not None for _, _, o in rows),
        }

    summary = rates(outcomes)
    tags = sorted({tag for _, tag, _ in outcomes})
    summary["per_tool"] = {tag: rates([row for row in outcomes if row[1] == tag]) for tag in tags}
    failures: list[dict[str, Any]] = []
    for item_id, tag, outcome in outcomes:
        if outcome.status == "first_ok" or len(failures) >= 20:
            continue
        first = outcome.attempts[0] if outcome.attempts else None
        failures.append(
            {
                "id": item_id,
                "tool": tag,
                "status": outcome.status,
                "first_reason": first.verdict.reason if first and first.verdict else None,
                "attempts": [
                    {"kind": a.kind, "content": a.content, "tool_calls": a.tool_calls} for a in outcome.attempts
                ],
            }
        )
    summary["sample_failures"] = failures
    return summary


def evaluate_policy(
    policy_dir: str | Path,
    items: Sequence[DemoItem | dict[str, Any]],
    *,
    adapter_dir: str | Path | None = None,
    max_tokens: int = 128,
    loop: LoopConfig = EVAL_LOOP,
    num_threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure a policy (optionally with a LoRA adapter) on ``items`` through LocalEngine + run_episode.

    Returns ``{"n", "first_attempt", "after_retry", "retry_rescued", "per_tool", ...}`` where each
    rate is ``{"rate", "successes", "n", "ci95": [lo, hi]}`` (95% Wilson score interval).
    """
    engine = LocalEngine(str(policy_dir), served_name="demo-base", num_threads=num_threads, max_model_len=2048)
    model = None

    async def run() -> dict[str, Any]:
        nonlocal model
        if adapter_dir is not None:
            await engine.load_adapter("demo-adapter", str(adapter_dir))
            model = "demo-adapter"
        try:
            return await evaluate_items(engine, items, model=model, max_tokens=max_tokens, loop=loop, progress=progress)
        finally:
            await engine.aclose()

    summary = asyncio.run(run())
    log.info(
        "policy %s: first attempt %.1f%%, after retry %.1f%% (n=%d)",
        policy_dir,
        100 * summary["first_attempt"]["rate"],
        100 * summary["after_retry"]["rate"],
        summary["n"],
    )
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A few human lines: overall rates with intervals, then per tool."""

    def pct(rate: dict[str, Any]) -> str:
        lo, hi = rate["ci95"]
        return f"{100 * rate['rate']:5.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"

    lines = [
        f"n={summary['n']}  first attempt {pct(summary['first_attempt'])}  "
        f"after retry {pct(summary['after_retry'])}  retry rescued {pct(summary['retry_rescued'])} "
        f"of {summary['retry_rescued']['n']}"
    ]
    for tag, row in summary.get("per_tool", {}).items():
        lines.append(
            f"  {tag:18s} n={row['n']:4d}  first {100 * row['first_attempt']['rate']:5.1f}%  "
            f"after retry {100 * row['after_retry']['rate']:5.1f}%"
        )
    return "\n".join(lines)


def write_summary(path: str | Path, summary: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
