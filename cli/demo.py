"""`rrr demo`: the laptop demo's base policy and its tasks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from cli.base import app, fail

demo_app = typer.Typer(help="The laptop demo: its base policy and its tasks.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")


@demo_app.command("build-policy")
def demo_build_policy(
    out: Path = typer.Option(Path("demo/policy"), "--out", help="Directory to write the policy into (replaced)."),
    seed: int = typer.Option(0, "--seed", help="Corpus, initialisation and batch-order seed."),
    steps: int | None = typer.Option(None, "--steps", help="Optimiser steps (default: the shipped recipe)."),
    threads: int = typer.Option(
        2,
        "--threads",
        help="CPU threads for training (the result depends on it only through floating-point summation order).",
    ),
) -> None:
    """Train the demo's base policy from scratch on the synthetic catalog corpus (minutes on 2 cores)."""
    from dataclasses import replace

    try:
        from demo.base_policy import build_policy, policy_size_bytes
        from demo.sft import SFTConfig
    except ImportError as exc:
        fail(f"the ml extra is not installed ({exc.name}); install with: pip install -e '.[ml]'")
    config = SFTConfig(seed=seed)
    if steps is not None:
        config = replace(config, steps=steps)
    try:
        result = build_policy(out, config, num_threads=threads)
    except OSError as exc:
        fail(f"could not write the policy to {out}: {exc.strerror or exc}")
    size = policy_size_bytes(out) / 1e6
    typer.echo(
        f"policy written to {out}: {result.parameters:,} parameters, {size:.1f} MB, trained in {result.seconds:.0f} s"
    )


@demo_app.command("eval-policy")
def demo_eval_policy(
    policy: Path = typer.Option(Path("demo/policy"), "--policy", help="The policy directory to measure."),
    adapter: Path | None = typer.Option(None, "--adapter", help="A LoRA adapter directory to apply."),
    n: int = typer.Option(600, "--n", help="Held-out tasks of the policy's recipe (balanced over the twelve tools)."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for generation."),
    out: Path | None = typer.Option(None, "--out", help="Also write the full summary as JSON here."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of a table."),
) -> None:
    """Measure first-attempt and after-retry success on held-out tasks through the real agent loop."""
    import json

    try:
        from demo.base_policy import (
            evaluate_policy,
            format_summary,
            held_out_items,
            policy_recipe,
            write_summary,
        )
    except ImportError as exc:
        fail(f"the ml extra is not installed ({exc.name}); install with: pip install -e '.[ml]'")
    if not (policy / "config.json").is_file():
        fail(f"no policy at {policy}; build one with: rrr demo build-policy --out {policy}")
    summary = evaluate_policy(
        policy, held_out_items(n, policy_recipe(policy)), adapter_dir=adapter, num_threads=threads
    )
    if out is not None:
        write_summary(out, summary)
    typer.echo(json.dumps(summary, ensure_ascii=False) if as_json else format_summary(summary))


@demo_app.command("check-policy")
def demo_check_policy(
    policy: Path = typer.Option(Path("demo/policy"), "--policy", help="The policy directory to check."),
    n: int = typer.Option(600, "--n", help="Dev tasks (never training, never held-out)."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for generation."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON instead of text."),
) -> None:
    """Check the policy's reflect -> retry preconditions on the dev split (what the recipe must meet)."""
    import json

    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from demo.base_policy import policy_recipe
        from demo.probe import Generator, dev_items, format_checks, recipe_checks
    except ImportError as exc:
        fail(f"the ml extra is not installed ({exc.name}); install with: pip install -e '.[ml]'")
    if not (policy / "config.json").is_file():
        fail(f"no policy at {policy}; build one with: rrr demo build-policy --out {policy}")
    if n < 1:
        fail("--n must be at least 1")
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    recipe = policy_recipe(policy)
    checks = recipe_checks(Generator(model, tokenizer, seed=recipe.seed), dev_items(n, recipe))
    typer.echo(json.dumps(checks, ensure_ascii=False) if as_json else format_checks(checks))


@demo_app.command("tasks")
def demo_tasks(
    split: str = typer.Option("heldout", "--split", help="train (the demo's traffic) or heldout."),
    n: int = typer.Option(600, "--n", help="How many tasks."),
    out: Path = typer.Option(..., "--out", help="JSON Lines file to write (the repo's openai format)."),
    policy: Path = typer.Option(
        Path("demo/policy"), "--policy", help="The policy whose recipe decides the held-out set (its sft.json)."
    ),
    heldout: int = typer.Option(
        500,
        "--heldout",
        help="With --split train: held-out tasks the traffic must "
        "not share a query with (as `rrr demo run --heldout`).",
    ),
    seed: int = typer.Option(0, "--seed", help="Traffic seed (as `rrr demo run --seed`)."),
) -> None:
    """Write demo tasks with their reference answers (`rrr eval`/`--dataset openai:PATH` reads them)."""
    import json

    from demo.base_policy import demo_splits
    from demo.corpus import items_to_records

    if split not in ("train", "heldout"):
        fail("--split must be train or heldout")
    if n < 1 or heldout < 1:
        fail("--n and --heldout must be at least 1")
    if split == "train":
        items = demo_splits(policy, n, heldout, seed=seed)[0]
    else:
        items = demo_splits(policy, 0, n, seed=seed)[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for record in items_to_records(items):
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    typer.echo(f"{len(items)} {split} tasks written to {out}")


@demo_app.command("run")
def demo_run(
    out: Path = typer.Option(Path(".rrr-demo"), "--out", help="Demo folder (git-ignored; cleaned before each run)."),
    policy: Path | None = typer.Option(None, "--policy", help="Base policy (default: demo/policy, else built once)."),
    train: int | None = typer.Option(
        None, "--train", help="Traffic tasks sent before each learner cycle (default 1000)."
    ),
    heldout: int | None = typer.Option(None, "--heldout", help="Held-out tasks measured per policy (default 500)."),
    steps: int | None = typer.Option(None, "--steps", help="GRPO steps per cycle (default: the demo's setting)."),
    cycles: int | None = typer.Option(
        None, "--cycles", help="Learner cycles, each after its own traffic (default 2; the second warm-starts)."
    ),
    seed: int = typer.Option(0, "--seed", help="Traffic and learner seed."),
    concurrency: int | None = typer.Option(None, "--concurrency", help="Requests in flight at once (default 4)."),
    no_build: bool = typer.Option(False, "--no-build", help="Fail instead of training a missing base policy."),
    keep_serving: bool = typer.Option(False, "--keep-serving", help="Keep the API up after the table until Ctrl-C."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of the table."),
) -> None:
    """The closed loop in one command: serve, record failures, learn, hot-swap, repeat; measure every policy."""
    import json
    import signal
    import time

    try:
        from demo.client import ClientError
        from demo.run import (
            DemoConfig,
            DemoError,
            DemoResult,
            demo_train_config,
            format_result,
            run_demo,
        )
        from demo.servers import DemoServers, ServerStartError
    except ImportError as exc:
        fail(f"the ml extra is not installed ({exc.name}); install with: pip install -e '.[ml]'")
    try:
        config = DemoConfig(out_dir=out, policy=policy, build_policy_if_missing=not no_build, seed=seed)
        config = dataclasses.replace(
            config,
            n_train=config.n_train if train is None else train,
            n_heldout=config.n_heldout if heldout is None else heldout,
            cycles=config.cycles if cycles is None else cycles,
            concurrency=config.concurrency if concurrency is None else concurrency,
            train=dataclasses.replace(config.train if steps is None else demo_train_config(steps), seed=seed),
        )
    except ValueError as exc:
        fail(str(exc))

    def stopped(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through the stages: the servers are stopped on the way out

    signal.signal(signal.SIGTERM, stopped)
    _quiet_libraries()

    shown = False

    def hold(servers: DemoServers, result: DemoResult) -> None:
        nonlocal shown
        typer.echo(json.dumps(result.to_dict(), default=str) if as_json else format_result(result))
        shown = True
        typer.echo(f"\nserving at {servers.api_url}/v1 (the inspection URLs above are live) until Ctrl-C", err=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass

    try:
        result = run_demo(config, say=lambda m: typer.echo(m, err=True), hold=hold if keep_serving else None)
    except (DemoError, ClientError, ServerStartError, ValueError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; the demo's servers were stopped")
    if not shown:
        typer.echo(json.dumps(result.to_dict(), default=str) if as_json else format_result(result))
    if result.table is None:
        statuses = ", ".join(str(c.get("status")) for c in result.cycles) or "none ran"
        fail(f"no trained adapter to compare (learner cycles: {statuses})")


def _quiet_libraries() -> None:
    """The demo shows its own progress bars: no weight-loading bars or deprecation notes from transformers."""
    import os
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
