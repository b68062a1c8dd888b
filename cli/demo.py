"""`rrr demo`: the laptop demo's base policy and its tasks."""

from __future__ import annotations

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
    threads: int = typer.Option(2, "--threads", help="CPU threads for training (the result depends on it only "
                                "through floating-point summation order)."),
) -> None:
    """Train the demo's base policy from scratch on the synthetic catalog corpus (minutes on 2 cores)."""
    from dataclasses import replace

    try:
        from learner.demo.policy import build_policy, policy_size_bytes
        from learner.demo.sft import SFTConfig
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
    typer.echo(f"policy written to {out}: {result.parameters:,} parameters, {size:.1f} MB, "
               f"trained in {result.seconds:.0f} s")


@demo_app.command("eval-policy")
def demo_eval_policy(
    policy: Path = typer.Option(Path("demo/policy"), "--policy", help="The policy directory to measure."),
    adapter: Path | None = typer.Option(None, "--adapter", help="A LoRA adapter directory to apply."),
    n: int = typer.Option(600, "--n", help="Held-out tasks (balanced over the twelve tools)."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for generation."),
    out: Path | None = typer.Option(None, "--out", help="Also write the full summary as JSON here."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of a table."),
) -> None:
    """Measure first-attempt and after-retry success on held-out tasks through the real agent loop."""
    import json

    try:
        from learner.demo.policy import evaluate_policy, format_summary, held_out_items, write_summary
    except ImportError as exc:
        fail(f"the ml extra is not installed ({exc.name}); install with: pip install -e '.[ml]'")
    if not (policy / "config.json").is_file():
        fail(f"no policy at {policy}; build one with: rrr demo build-policy --out {policy}")
    summary = evaluate_policy(policy, held_out_items(n), adapter_dir=adapter, num_threads=threads)
    if out is not None:
        write_summary(out, summary)
    typer.echo(json.dumps(summary, ensure_ascii=False) if as_json else format_summary(summary))


@demo_app.command("tasks")
def demo_tasks(
    split: str = typer.Option("heldout", "--split", help="train or heldout."),
    n: int = typer.Option(600, "--n", help="How many tasks."),
    out: Path = typer.Option(..., "--out", help="JSON Lines file to write (the repo's openai format)."),
) -> None:
    """Write demo tasks with their reference answers (`rrr eval`/`--dataset openai:PATH` reads them)."""
    import json

    from learner.demo.corpus import generate_items, items_to_records
    from learner.demo.policy import held_out_items

    if split not in ("train", "heldout"):
        fail("--split must be train or heldout")
    items = held_out_items(n) if split == "heldout" else generate_items(n, seed=10_000, prefix="traffic")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for record in items_to_records(items):
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    typer.echo(f"{len(items)} {split} tasks written to {out}")
