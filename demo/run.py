"""`rrr demo run`: the closed loop on a laptop, cycle after cycle, with measured numbers for every policy.

Who calls it: ``rrr demo run`` (``make demo``) and tests (tiny settings). ``run_demo`` reads top
to bottom; every stage is a function (here, or the API client side in ``demo.client``) and
its time is recorded in ``demo.json``:

1. ``resolve_policy``: the base policy (``--policy``, else the shipped ``demo/policy``, else a
   copy built once into ``<out>/policy`` with ``demo.base_policy.build_policy``).
2. ``demo.servers.demo_servers``: ``rrr engine serve`` (runtime LoRA updating on) and
   ``rrr serve`` on it, SQLite under ``<out>/data``, free loopback ports, always torn down.
3. The held-out split through the API under the base (pinned by name), sent as evaluation
   traffic (``rrr.purpose = "eval"``): recorded like any request, never a training candidate,
   so measuring before training leaks nothing into it.
4. Per cycle (``DemoConfig.cycles``, default 2):
   a. ``client.send_tasks``: that cycle's traffic through the official ``openai`` SDK with
      ``model="rrr"``, i.e. served by whatever is in service (the base, then ``rrr-v1``, ...);
      the API reflects, retries and records every attempt.
   b. ``run_learner``: one ``learner.cycle.run_cycle``, the function the scheduler runs: the
      failures collected under the adapter in service (plus a capped replay of older unsolved
      ones) -> GRPO on reflection tokens in a subprocess, warm-started from that adapter -> the
      paired gate on the batch's held-out failures and past successes -> publish and hot-swap.
   c. The held-out split under what the cycle produced: the promoted adapter via ``model="rrr"``,
      or a gate-rejected candidate registered as a ``candidate`` row, loaded and pinned by
      name, then marked rejected (evaluation traffic again).
5. ``demo.report`` / ``demo.chart``: the learning curve (every policy's held-out rates with 95%
   Wilson intervals), the last promoted adapter against the base (paired differences with their
   intervals, fixed/broken counts, rescues of the base's failures), ``demo.json`` (``cycles``,
   ``comparison``, ``curve``), ``demo.png``, and JSON snapshots of the inspection endpoints
   taken while the API was up.

What it deliberately does not do: train the base policy itself (``demo.base_policy``), any
supervised learning, reach into the API's process (everything goes over HTTP or through the
shared SQLite file), or print.

``DemoConfig`` holds every setting in one place; ``demo_train_config`` documents the learner
settings and what they did when measured. Progress is shown with tqdm (``progress=False`` turns
it off) and stage lines go to the ``say`` callback.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.loop import LoopConfig
from demo.client import (
    Sent,
    sample_episode,
    send_tasks,
    snapshot_inspection,
    wait_model_listed,
    wait_recorded,
)
from demo.corpus import DemoItem
from demo.report import compare, format_rate, format_table, summarize_statuses
from demo.servers import DemoServers, demo_servers
from learner.config import GateConfig, TrainConfig

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from engines.base import Engine
    from learner.cycle import CycleResult

log = logging.getLogger(__name__)

MARKER = ".rrr-demo"
"""File that marks a folder as a demo output folder (only such a folder is cleaned before a run)."""
MANAGED = ("data", "learner", "logs", "inspection", "demo.json", "demo.png", "heldout.json")
SERVED_NAME = "demo-policy"
TRAIN_TAG, HELDOUT_TAG = "demo-traffic", "demo-heldout"

Say = Callable[[str], None]


class DemoError(RuntimeError):
    """An expected failure of the demo (the CLI prints the message and exits 1)."""


def demo_train_config(max_steps: int = 30) -> TrainConfig:
    """The demo's GRPO settings, chosen by measurement (2-core CPU, the demo policy's recipe).

    Each choice:

    * completion = the reflection, capped at 32 tokens (``max_completion_length``, also the API's
      ``RRR_REFLECTION_MAX_TOKENS`` and the gate's cap): the policy's reflections are diagnoses of
      one to three short sentences (6-25 tokens, ``demo.diagnosis``), never a restated call, so a
      short cap loses nothing and makes every GRPO step and every reflection in serving cheaper.
    * retry greedy (``retry_temperature=0``), 128 tokens: the reward asks what serving does, a
      temperature-0 retry. A sampled retry (1.0) cut zero-variance groups only from 95% to 89% and
      changed nothing on held-out tasks.
    * G = 8 reflections at temperature 1.0, 4 failed prompts per step (32 completions): G = 16 (2
      prompts) and temperature 1.5 were no better; on CPU one step costs about the same for 16 or
      32 completions (generation is per-token bound), so fewer prompts per step only loses signal.
    * LoRA r = 8, alpha 16, all linear projections (vLLM-servable), beta 0.001 (the paper's KL).
    * lr 1e-3, constant after 5 warm-up steps, 30 steps (about 6-9 s each, 3-4 minutes, what the
      15-minute budget leaves): at 3e-4 the adapter barely moved in so few steps (held-out retry
      rescue 1.6% -> 1.7%); 1e-3 and 2e-3 did not lower first-attempt accuracy at 30-40 steps
      (the prototype's drop came after 120 steps at 1e-3), and the gate's regression check would
      reject an adapter that did. 40 steps were no better than 30.
    * one checkpoint at the end (``save_steps=max_steps``): a demo run is short, resuming is moot.

    The measurements below were made with the previous demo policy (reflections that restated the
    call, cap 96); ``make demo``'s own numbers with the current policy are in the README.

    Measured with that policy (whole-number tokens, 90% first attempt; one ``make demo``
    each, 1000 traffic tasks, 109 failures: 73 to train on, 36 for the gate, 500 held-out tasks):
    30 steps: gate held-out retry 5.6% -> 11.1%, regression 100% -> 100%, promoted; held-out
    +1.0 / +0.4 points (first attempt / after retry, both intervals include 0). 60 steps (7
    minutes): gate held-out retry 2.6% -> 18.4% but regression 100% -> 97%, so the gate rejected
    it; held-out +0.8 / +0.4 points, first attempts fixed 8 and broke 4 (30 steps: 6 and 1). More
    steps buy retry success on the failures at the price of first attempts elsewhere: 30 it is.
    Training reward 2-3% per step, 89% of groups without reward variance.

    Measured earlier with a one-token-per-digit policy (300 held-out tasks, first attempt / after
    reflection + retry / retry rescues of first-attempt failures; base 59.0% / 59.7% / 1.6%; each
    after 30-40 steps on the same 331 failures): lr 3e-4: 59.7 / 60.3 / 1.7; lr 1e-3: 60.0 / 61.3 / 3.3;
    lr 1e-3 + temperature 1.3
    (40 steps): 60.0 / 60.7 / 1.7; lr 2e-3 (40 steps): 59.7 / 60.3 / 1.7; G 16: 59.3 / 60.0 / 1.6;
    retry temperature 1.0: 59.3 / 60.0 / 1.6; temperature 1.5: 59.0 / 59.7 / 1.6. Every difference
    is within noise (a 95% interval at n = 300 is about +-5.5 points). What limits the demo is
    the reward, not the optimiser: the policy's reflections rarely fix its own errors (mostly
    multi-digit numbers copied wrong, the same skill on both attempts), so 90-95% of groups have
    zero reward variance and the training reward stays at 1-3%.
    """
    return TrainConfig(
        learning_rate=1e-3,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=5,
        max_steps=max_steps,
        beta=0.001,
        num_generations=8,
        per_device_train_batch_size=32,
        gradient_accumulation_steps=1,
        max_completion_length=32,
        retry_max_tokens=128,
        temperature=1.0,
        retry_temperature=0.0,
        lora_r=8,
        lora_alpha=16,
        max_lora_rank=16,
        save_steps=max(1, max_steps),
        keep_checkpoints=1,
    )


def demo_gate_config() -> GateConfig:
    """The gate as the product ships it (paired: the gain's lower bound above 0, a 5-point forgetting
    ruled out), answers capped like the demo's."""
    return GateConfig(min_items=20, max_tokens=128, concurrency=1)


@dataclass
class DemoConfig:
    """Every setting of one demo run.

    out_dir: the demo's folder (git-ignored): ``data/`` (SQLite, spool, published adapters),
        ``learner/`` (training runs), ``logs/``, ``inspection/``, ``demo.json``, ``demo.png``.
    policy: the base policy folder; None = ``demo/policy``, else a copy built once into
        ``<out>/policy`` (``build_policy_if_missing``; otherwise the demo stops with a hint).
    n_train / n_heldout: tasks sent before training (their failures are the learner's data) and
        held-out tasks measured per policy (balanced over the twelve tools, never in training).
        The shipped policy answers about 90% of tasks on its first attempt, so 1000 traffic tasks
        give about 100 failures (70 to train on, 30 for the gate); 500 held-out tasks give Wilson
        intervals of about +-2.7 points and, because both policies answer the same tasks, paired
        intervals on the difference of about +-1-1.5 points. Traffic runs at about 8-10 tasks a
        second on 2 quiet cores (about 2 minutes), each held-out pass under a minute.
    concurrency: requests in flight at once (the local engine generates one at a time; a few in
        flight keep it busy while the API verifies and records).
    max_tokens / reflection_max_tokens: caps of each answer and each reflection, the same in serving,
        training (``train.max_completion_length``) and the gate.
    train / gate: the learner's GRPO and gate settings (``demo_train_config``, ``demo_gate_config``).
    dataset_limit / heldout_fraction: the failure batch and the share of it the gate holds out.
    regression_limit: past first-attempt successes the gate re-asks to catch forgetting (each
        costs two evaluation episodes; the gate's own time is most of the learner stage after training).
    train_threads: OMP threads of the training child (it runs alone; both cores are free).
    """

    out_dir: Path = Path(".rrr-demo")
    policy: Path | None = None
    build_policy_if_missing: bool = True
    n_train: int = 1000
    n_heldout: int = 500
    cycles: int = 2
    seed: int = 0
    concurrency: int = 4
    max_tokens: int = 128
    reflection_max_tokens: int = 32
    train: TrainConfig = field(default_factory=demo_train_config)
    gate: GateConfig = field(default_factory=demo_gate_config)
    dataset_limit: int = 512
    heldout_fraction: float = 0.3
    regression_limit: int = 100
    max_lora_rank: int = 16
    train_threads: int = 2
    startup_timeout_s: float = 180.0
    request_timeout_s: float = 180.0

    def __post_init__(self) -> None:
        if self.n_train < 1 or self.n_heldout < 1 or self.cycles < 1:
            raise ValueError("n_train, n_heldout and cycles must be at least 1")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.train.max_completion_length != self.reflection_max_tokens:
            raise ValueError(
                "train.max_completion_length must equal reflection_max_tokens: the learner must "
                "train reflections of the length serving lets the model write"
            )
        if self.train.max_lora_rank != self.max_lora_rank:
            raise ValueError("train.max_lora_rank must equal max_lora_rank (the engine's --max-lora-rank)")

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("train", "gate")}
        data["out_dir"], data["policy"] = str(self.out_dir), str(self.policy) if self.policy else None
        data["train"], data["gate"] = self.train.to_dict(), asdict(self.gate)
        return data


@dataclass
class DemoResult:
    """What a run measured; ``to_dict`` is ``demo.json``."""

    policy: str
    api_url: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    traffic: list[dict[str, Any]] = field(default_factory=list)
    """Per cycle, the traffic sent before it (served by the policy in service at the time)."""
    cycles: list[dict[str, Any]] = field(default_factory=list)
    """Per learner cycle: adapter, warm_start_from, status, the gate's paired numbers, training, held-out."""
    training_steps: list[dict[str, Any]] = field(default_factory=list)
    """Every GRPO step's metrics, tagged with its ``cycle``."""
    curve: list[dict[str, Any]] = field(default_factory=list)
    """The learning curve: held-out rates of the base, then of each cycle's adapter."""
    before_label: str = ""
    after_label: str | None = None
    after_kind: str | None = None
    """promoted | candidate (no cycle promoted; the last candidate, pinned by name) | None (no adapter)."""
    table: dict[str, Any] | None = None
    comparison: dict[str, Any] | None = None
    """The last promoted adapter (else the last candidate) vs the base on the held-out tasks, paired."""
    before: dict[str, Any] = field(default_factory=dict)
    served_by: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per measurement, the adapters the API reported in each answer's `rrr` object (base = none)."""
    inspection: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- stage 1: the policy -----------------------------------------------------------------------------


def resolve_policy(config: DemoConfig, *, say: Say, progress: bool = True) -> Path:
    """The base policy folder (see DemoConfig.policy); builds the cached copy when allowed."""
    from demo.base_policy import SHIPPED_POLICY

    if config.policy is not None:
        if not (config.policy / "config.json").is_file():
            raise DemoError(
                f"no policy at {config.policy}; build one with: rrr demo build-policy --out {config.policy}"
            )
        return config.policy
    for folder in (SHIPPED_POLICY, config.out_dir / "policy"):
        if (folder / "config.json").is_file():
            return folder
    cache = config.out_dir / "policy"
    if not config.build_policy_if_missing:
        raise DemoError(f"the shipped policy {SHIPPED_POLICY} is missing; build it with: rrr demo build-policy")
    from demo.base_policy import build_policy

    say(
        f"the shipped policy {SHIPPED_POLICY} is missing: training one from scratch into {cache} "
        "(about 6 minutes on 2 cores, once)"
    )
    build_policy(cache, num_threads=config.train_threads, progress=progress)
    return cache


# --- stage 4: the learner ----------------------------------------------------------------------------


async def run_learner(
    config: DemoConfig,
    policy: Path,
    servers: DemoServers,
    database_url: str,
    sessions: sessionmaker[Session],
    engines: Engine,
    *,
    say: Say,
    progress: bool = True,
) -> tuple[CycleResult, list[dict[str, Any]], dict[str, float]]:
    """One learner cycle against the demo's engine; returns the result, per-step metrics, sub-timings."""
    from tqdm.auto import tqdm

    from learner.config import LearnerConfig
    from learner.cycle import CycleEvent, run_cycle
    from learner.launch import launch_training

    learner = LearnerConfig(
        adapters_root=str(config.out_dir / "data" / "adapters"),
        model_path=str(policy),
        engine_urls=[servers.engine_url],
        database_url=database_url,
        work_dir=str(config.out_dir / "learner"),
        base_model_name=servers.served_name,
        min_new_failures=1,
        max_lora_rank=config.max_lora_rank,
        dataset_limit=config.dataset_limit,
        max_client_share=1.0,
        heldout_fraction=config.heldout_fraction,
        regression_limit=config.regression_limit,
        seed=config.seed,
        gate=config.gate,
        train=config.train,
        drain_s=0.0,
        gate_loop=LoopConfig(reflection_max_tokens=config.reflection_max_tokens),
    )
    steps: list[dict[str, Any]] = []
    marks: dict[str, float] = {}
    gate_episodes = 2 * sum(_batch_sizes(learner, sessions)[k] for k in ("heldout", "regression"))
    bar = tqdm(total=config.train.max_steps, desc="GRPO", unit="step", disable=not progress, leave=True)
    gate_bar: Any = None

    def on_gate_item() -> None:
        nonlocal gate_bar
        if gate_bar is None:
            bar.close()
            gate_bar = tqdm(total=gate_episodes, desc="gate", unit="episode", disable=not progress, leave=True)
        gate_bar.update(1)

    def on_step(item: dict[str, Any]) -> None:
        steps.append(item)
        bar.update(1)
        bar.set_postfix(
            {k: round(float(item[k]), 3) for k in ("reward_mean", "frac_reward_zero_std", "kl") if k in item},
            refresh=False,
        )

    def on_event(event: CycleEvent) -> None:
        if event.stage in ("train", "gate", "gate_done"):
            marks[event.stage] = event.at
        if event.stage == "gate_done" and gate_bar is not None:
            gate_bar.close()
        tqdm.write(event.message, file=sys.stderr) if progress else say(event.message)

    trainer = functools.partial(launch_training, on_step=on_step, env={"OMP_NUM_THREADS": str(config.train_threads)})
    try:
        result = await run_cycle(
            learner,
            session_factory=sessions,
            engines=engines,
            trainer=trainer,
            on_event=on_event,
            on_step=on_step,
            on_gate_item=on_gate_item,
        )
    finally:
        bar.close()
        if gate_bar is not None:
            gate_bar.close()
    timings = {}
    if "train" in marks and "gate" in marks:
        timings["train"] = marks["gate"] - marks["train"]
    if "gate" in marks and "gate_done" in marks:
        timings["gate"] = marks["gate_done"] - marks["gate"]
    return result, steps, timings


def _batch_sizes(learner: Any, sessions: sessionmaker[Session]) -> dict[str, int]:
    """The sizes of the batch the cycle is about to draw (the same deterministic query), for the gate's bar."""
    from learner.dataset import build_failure_dataset

    with sessions() as session:
        return build_failure_dataset(
            session,
            limit=learner.dataset_limit,
            max_client_share=learner.max_client_share,
            heldout_fraction=learner.heldout_fraction,
            seed=learner.seed,
            regression_limit=learner.regression_limit,
        ).summary()


async def stage_candidate(
    adapter_dir: Path, *, config: DemoConfig, sessions: sessionmaker[Session], engines: Engine, run_id: str | None
) -> str:
    """Register a gate-rejected candidate (status `candidate`, never active), load and probe it on
    the engine, so the held-out split can pin it by name; `retire_candidate` marks it rejected."""
    from adapters.serving import prepare, register_candidate

    root = (config.out_dir / "data" / "adapters").resolve()
    staged = await register_candidate(
        adapter_dir,
        adapters_root=root,
        session_factory=sessions,
        base_model=SERVED_NAME,
        run_id=run_id,
        metrics={"note": "the gate rejected this candidate; the demo loaded it only to measure it pinned by name"},
    )
    await prepare(engines, staged.name, str(staged.path), adapters_root=root, manifest_sha256=staged.manifest_sha256)
    return staged.name


async def retire_candidate(
    name: str, reasons: Sequence[str], *, sessions: sessionmaker[Session], engines: Engine
) -> None:
    from adapters.serving import unload_everywhere
    from store import repos

    with sessions() as session, session.begin():
        row = repos.get_adapter(session, name)
        metrics = dict(row.metrics or {}) if row is not None else {}
        repos.set_adapter_status(
            session, name, "rejected", metrics={**metrics, "rejected_reason": "gate: " + "; ".join(reasons)}
        )
    await unload_everywhere(engines, name)


# --- the run -----------------------------------------------------------------------------------------


def prepare_out_dir(out: Path) -> None:
    """Create `out`, or clean the outputs of a previous demo run in it (the built policy is kept)."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise DemoError(f"{out} exists and is not a demo folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("rrr demo output folder; `rrr demo run` cleans it\n", encoding="utf-8")
    for name in MANAGED:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def run_demo(
    config: DemoConfig,
    *,
    say: Say = log.info,
    progress: bool = True,
    hold: Callable[[DemoServers, DemoResult], None] | None = None,
) -> DemoResult:
    """Run every stage (module docstring); `hold` is called with the servers still up and the
    finished result (outputs written), e.g. to keep serving until Ctrl-C. Raises DemoError for
    expected failures; the servers are always stopped."""
    started = time.monotonic()
    timings: dict[str, float] = {}

    def timed(name: str, since: float) -> float:
        timings[name] = round(time.monotonic() - since, 1)
        return time.monotonic()

    out = config.out_dir
    prepare_out_dir(out)
    t = time.monotonic()
    from demo.base_policy import demo_splits

    policy = resolve_policy(config, say=say, progress=progress)
    train_items, heldout_items = demo_splits(policy, config.n_train * config.cycles, config.n_heldout, seed=config.seed)
    result = DemoResult(policy=str(policy), config=config.to_dict())
    t = timed("policy", t)
    say(f"base policy: {policy}; {len(train_items)} training tasks, {len(heldout_items)} held-out tasks")
    api_env = {
        "RRR_REFLECTION_MAX_TOKENS": str(config.reflection_max_tokens),
        "RRR_DEADLINE_S": "120",
        "RRR_POLICY_TTL_S": "0.5",
    }
    with demo_servers(
        policy,
        out / "data",
        out / "logs",
        served_name=SERVED_NAME,
        max_lora_rank=config.max_lora_rank,
        api_env=api_env,
        startup_timeout_s=config.startup_timeout_s,
    ) as servers:
        result.api_url = servers.api_url
        t = timed("servers", t)
        say(f"rrr API: {servers.api_url}/v1 (engine {servers.engine_url}); data in {out / 'data'}")
        asyncio.run(_serve_stages(config, policy, servers, train_items, heldout_items, result, timings, say, progress))
        timings["total"] = round(time.monotonic() - started, 1)
        result.timings = timings
        _write_outputs(config, result)
        if hold is not None:
            hold(servers, result)
    return result


async def _serve_stages(
    config: DemoConfig,
    policy: Path,
    servers: DemoServers,
    train_items: list[DemoItem],
    heldout_items: list[DemoItem],
    result: DemoResult,
    timings: dict[str, float],
    say: Say,
    progress: bool,
) -> None:
    from engines.pool import EnginePool
    from engines.vllm import VLLMEngine
    from store.db import make_engine, make_session_factory

    database_url = f"sqlite:///{(config.out_dir / 'data' / 'rrr.db').resolve()}"
    db = make_engine(database_url)
    sessions = make_session_factory(db)
    engines = EnginePool([VLLMEngine(servers.engine_url, None, name="demo-engine")])
    chunk = len(train_items) // config.cycles
    samples: list[Sent] = []
    try:
        # 3. the held-out split under the base, as evaluation traffic (recorded, never trained on)
        t = time.monotonic()
        base = await _heldout(
            config, servers, heldout_items, SERVED_NAME, f"{HELDOUT_TAG}-base", "held-out, base", progress
        )
        result.before_label = f"base ({SERVED_NAME})"
        result.before = summarize_statuses(base.statuses)
        result.served_by["base"] = dict(base.adapters)
        result.curve.append({"label": result.before_label, "kind": "base", "adapter": None, **_rates(result.before)})
        timings["heldout_base"] = round(time.monotonic() - t, 1)
        say(f"held-out, base: {_line(result.before)}")
        last: tuple[str, str, Sent] | None = None
        for k in range(1, config.cycles + 1):
            # 4. traffic under whatever is in service (the base, then rrr-v1, ...)
            t = time.monotonic()
            tag = f"{TRAIN_TAG}-{k}"
            items = train_items[(k - 1) * chunk : k * chunk]
            traffic = await send_tasks(
                servers.api_url,
                items,
                model="rrr",
                task=tag,
                **_client_args(config),
                desc=f"traffic {k}",
                progress=progress,
            )
            samples.append(traffic)
            stored = await asyncio.to_thread(wait_recorded, sessions, tag, len(items))
            summary = {
                **summarize_statuses(traffic.statuses),
                "recorded": stored,
                "served_by": dict(traffic.adapters),
                "request_errors": traffic.errors[:5],
            }
            result.traffic.append(summary)
            timings[f"traffic_{k}"] = round(time.monotonic() - t, 1)
            say(f"traffic {k} (served by {', '.join(traffic.adapters)}): {_line(summary)}; {stored} episodes recorded")

            # 5. one learner cycle (warm-started from the adapter in service, if any)
            t = time.monotonic()
            cycle, steps, sub = await run_learner(
                config, policy, servers, database_url, sessions, engines, say=say, progress=progress
            )
            timings[f"learner_{k}"] = round(time.monotonic() - t, 1)
            timings.update({f"learner_{k}_{name}": round(v, 1) for name, v in sub.items()})
            say(
                f"learner cycle {k}: {cycle.status}"
                + (f" ({cycle.adapter})" if cycle.adapter else "")
                + "".join(f"\n  - {reason}" for reason in cycle.reasons)
            )
            if cycle.status == "failed":
                raise DemoError(f"learner cycle {k} failed: {cycle.error}")
            entry = _cycle_entry(k, cycle, steps, sessions)
            result.cycles.append(entry)
            result.training_steps += [{**step, "cycle": k} for step in steps]

            # 6. the held-out split under what the cycle produced
            t = time.monotonic()
            measured = await _measure_cycle(config, cycle, servers, heldout_items, sessions, engines, k, progress)
            if measured is not None:
                label, kind, sent = measured
                rates = summarize_statuses(sent.statuses)
                entry["heldout"] = rates
                entry["heldout_kind"] = kind
                if kind == "candidate":
                    entry["candidate"] = label.split(" ")[0]  # the name it was registered and measured under
                result.served_by[f"cycle_{k}"] = dict(sent.adapters)
                name = entry["adapter"] or entry.get("candidate")
                result.curve.append({"label": label, "kind": kind, "adapter": name, **_rates(rates)})
                timings[f"heldout_{k}"] = round(time.monotonic() - t, 1)
                say(f"held-out, {label}: {_line(rates)}")
                if kind == "promoted" or last is None or last[1] != "promoted":
                    last = measured
        if last is not None:
            label, kind, sent = last
            result.after_label, result.after_kind = label, kind
            result.table = compare(base.statuses, sent.statuses)
            result.comparison = comparison(base.statuses, sent.statuses, label=label, kind=kind)
            (config.out_dir / "heldout.json").write_text(
                json.dumps(
                    {i: {"base": base.statuses.get(i), "last": sent.statuses.get(i)} for i in base.statuses},
                    indent=1,
                    sort_keys=True,
                )
                + "\n",
                encoding="utf-8",
            )

        # inspection snapshots while the API is still up
        last_run = next((c["run_id"] for c in reversed(result.cycles) if c.get("run_id")), None)
        result.inspection = await snapshot_inspection(
            servers.api_url,
            config.out_dir / "inspection",
            sample_episode=next((e for e in (sample_episode(s) for s in samples) if e), None),
            run_id=last_run,
        )
    finally:
        await engines.aclose()
        db.dispose()


async def _heldout(
    config: DemoConfig, servers: DemoServers, items: list[DemoItem], model: str, task: str, desc: str, progress: bool
) -> Sent:
    return await send_tasks(
        servers.api_url,
        items,
        model=model,
        task=task,
        purpose="eval",
        **_client_args(config),
        desc=desc,
        progress=progress,
    )


def _rates(summary: dict[str, Any]) -> dict[str, Any]:
    return {key: summary[key] for key in ("n", "first_attempt", "after_retry", "retry_rescued")}


def _cycle_entry(
    k: int, cycle: CycleResult, steps: list[dict[str, Any]], sessions: sessionmaker[Session]
) -> dict[str, Any]:
    """One ``cycles`` entry of demo.json: what the cycle trained from, what the gate measured and decided."""
    from store.models import TrainingRun

    warm = None
    if cycle.run_id:
        with sessions() as session:
            run = session.get(TrainingRun, cycle.run_id)
            warm = run.warm_start_from if run is not None else None
    gate = cycle.gate or {}
    rewards = [float(s["reward_mean"]) for s in steps if "reward_mean" in s]
    flat = [float(s["frac_reward_zero_std"]) for s in steps if "frac_reward_zero_std" in s]
    return {
        "cycle": k,
        "run_id": cycle.run_id,
        "adapter": cycle.adapter,
        "warm_start_from": warm,
        "status": cycle.status,
        "reasons": list(cycle.reasons),
        "dataset": cycle.dataset,
        "gate": {key: value for key, value in gate.items() if key != "reasons"} or None,
        "training": {
            "steps": len(steps),
            "reward_mean_first_5": round(sum(rewards[:5]) / max(1, len(rewards[:5])), 4) if rewards else None,
            "reward_mean_last_5": round(sum(rewards[-5:]) / max(1, len(rewards[-5:])), 4) if rewards else None,
            "zero_variance_mean": round(sum(flat) / len(flat), 4) if flat else None,
        },
    }


def comparison(base: dict[str, str], last: dict[str, str], *, label: str, kind: str) -> dict[str, Any]:
    """demo.json's ``comparison``: the last adapter vs the base on the held-out tasks, paired.

    ``rescue_among_base_failures``: of the tasks the base got wrong on its first attempt, the share each
    policy answered correctly after reflection and retry (the base: its retry rescue rate), with
    95% Wilson intervals.
    """
    from evals.stats import SUCCESS_AFTER, Rate

    table = compare(base, last)

    def diff(metric: str) -> dict[str, Any]:
        d = table["difference"][metric]
        return {"diff": d["difference"], "ci95": d["ci95"], "fixed": d["fixed"], "broke": d["broken"], "n": d["n"]}

    base_failed = [i for i, status in base.items() if status not in ("first_ok", "error") and i in last]
    rescued_base = sum(base[i] in SUCCESS_AFTER for i in base_failed)
    rescued_last = sum(last[i] in SUCCESS_AFTER for i in base_failed)
    from demo.report import rate_dict

    return {
        "adapter": label,
        "kind": kind,
        "first_attempt": diff("first_attempt"),
        "after_retry": diff("after_retry"),
        "rescue_among_base_failures": {
            "n": len(base_failed),
            "base": rate_dict(Rate(rescued_base, len(base_failed))),
            "adapter": rate_dict(Rate(rescued_last, len(base_failed))),
        },
    }


async def _measure_cycle(
    config: DemoConfig,
    cycle: CycleResult,
    servers: DemoServers,
    heldout_items: list[DemoItem],
    sessions: sessionmaker[Session],
    engines: Engine,
    k: int,
    progress: bool,
) -> tuple[str, str, Sent] | None:
    """The held-out split under cycle ``k``'s adapter: the promoted one via ``model="rrr"``, or a
    gate-rejected candidate registered, loaded and pinned by name, then marked rejected."""
    if cycle.status == "promoted" and cycle.adapter:
        await wait_model_listed(servers.api_url, cycle.adapter, alias=True)
        label = f"{cycle.adapter} (promoted, cycle {k})"
        sent = await _heldout(
            config, servers, heldout_items, "rrr", f"{HELDOUT_TAG}-{k}", f"held-out, {cycle.adapter}", progress
        )
        return label, "promoted", sent
    if cycle.gate is not None and not cycle.gate.get("promote") and cycle.run_id:
        adapter_dir = config.out_dir / "learner" / cycle.run_id / "adapter"
        name = await stage_candidate(
            adapter_dir, config=config, sessions=sessions, engines=engines, run_id=cycle.run_id
        )
        try:
            await wait_model_listed(servers.api_url, name)
            sent = await _heldout(
                config, servers, heldout_items, name, f"{HELDOUT_TAG}-{k}", f"held-out, {name}", progress
            )
        finally:
            await retire_candidate(name, cycle.reasons, sessions=sessions, engines=engines)
        return f"{name} (candidate of cycle {k}, gate rejected)", "candidate", sent
    return None


def _client_args(config: DemoConfig) -> dict[str, Any]:
    return {"concurrency": config.concurrency, "max_tokens": config.max_tokens, "timeout_s": config.request_timeout_s}


def _line(summary: dict[str, Any]) -> str:
    first, after = summary["first_attempt"], summary["after_retry"]
    return (
        f"n={summary['n']}, first attempt {100 * first['rate']:.1f}%, after reflection + retry "
        f"{100 * after['rate']:.1f}%, errors {summary['errors']}"
    )


def _write_outputs(config: DemoConfig, result: DemoResult) -> None:
    from demo.chart import write_chart

    json_path, png_path = config.out_dir / "demo.json", config.out_dir / "demo.png"
    result.files = {"json": str(json_path), "png": str(png_path)}
    if result.table is not None and result.after_label:
        write_chart(
            png_path,
            result.table,
            before_label=result.before_label,
            after_label=result.after_label,
            steps=result.training_steps,
            curve=result.curve,
            title=f"rrr demo: {len(result.cycles)} learner cycles on the demo policy",
        )
    else:
        result.files.pop("png")
    json_path.write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")


def format_result(result: DemoResult) -> str:
    """The human summary: the learning curve, the base-vs-last table, each gate decision, times, files, URLs."""
    lines = []
    if result.curve:
        lines += [
            "",
            "held-out tasks through the rrr API, per policy (greedy, one reflection + one retry; 95% Wilson):",
            "",
        ]
        width = max(len(row["label"]) for row in result.curve) + 2
        lines.append(f"{'policy':<{width}}{'n':>5}  {'first attempt':<24}{'after reflection + retry':<26}retry rescued")
        for row in result.curve:
            lines.append(
                f"{row['label']:<{width}}{row['n']:>5}  {format_rate(row['first_attempt']):<24}"
                f"{format_rate(row['after_retry']):<26}"
                f"{format_rate(row['retry_rescued'])} of {row['retry_rescued']['n']}"
            )
    if result.table is not None and result.after_label:
        lines += [
            "",
            "the last adapter vs the base on the same tasks (difference with a 95% paired Newcombe interval):",
            "",
            format_table(result.table, result.before_label, result.after_label),
        ]
        rescue = (result.comparison or {}).get("rescue_among_base_failures")
        if rescue:
            lines.append(
                f"of the base's {rescue['n']} first-attempt failures, answered after reflection + retry: "
                f"base {format_rate(rescue['base'])}, "
                f"{result.after_label.split(' ')[0]} {format_rate(rescue['adapter'])}"
            )
    for cycle in result.cycles:
        warm = f", warm-started from {cycle['warm_start_from']}" if cycle.get("warm_start_from") else ", from the base"
        lines += [
            "",
            f"cycle {cycle['cycle']}: {cycle['status']}"
            + (f" ({cycle['adapter']})" if cycle["adapter"] else "")
            + warm,
        ]
        lines += [f"  - {reason}" for reason in cycle.get("reasons", [])]
    lines += ["", "stage times (s): " + ", ".join(f"{k} {v:g}" for k, v in result.timings.items())]
    lines += ["", *(f"{kind}: {path}" for kind, path in result.files.items())]
    if result.inspection:
        lines += ["", "inspection (saved under inspection/; live while the servers run):"]
        lines += [f"  {name:<24} {url}" for name, url in result.inspection.items()]
    return "\n".join(lines)
