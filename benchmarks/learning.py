"""Does GRPO on reflections improve the demo policy, and how much does that depend on the seed? (issue 11)

Repeats the demo's learning stage once per GRPO seed on the same failures and prints every seed:

1. The base policy (``--policy``, default ``demo/policy``) answers ``--traffic`` traffic tasks of
   the demo (``demo.base_policy.demo_splits``: never a held-out query), greedy; each failed first
   attempt becomes the learner's training row exactly as ``learner.dataset`` builds it from a
   recorded episode (task, failed call, the paper's reflection request; binary feedback only).
2. Per seed: ``learner.train.train`` with the demo's GRPO settings (``demo.run.demo_train_config``,
   that seed) on those rows, in this process; the reward is the real ``learner.reward.RetryReward``.
3. The base and every seed's adapter run the held-out tasks (``--heldout``, balanced over the
   tools, greedy, one reflection and one retry: the serving loop's episode, batched with
   ``demo.probe.run_episodes``), and each adapter is compared with the base on the same tasks:
   paired differences of first-attempt and after-retry success with 95% Newcombe intervals, and
   the share of the base's first-attempt failures each policy answers after reflection + retry.

No servers, no gate (each seed's adapter is measured whatever a gate would say) and no second
cycle: this isolates what the learning stage does; ``make demo`` runs the whole loop. Tune nothing
on its held-out numbers (the recipe's dev split is for that: ``rrr demo check-policy``).

    .venv/bin/python benchmarks/learning.py [--seeds 0 1 2] [--traffic 1000] [--heldout 500] [--steps 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _pts(diff: dict[str, Any]) -> str:
    lo, hi = diff["ci95"]
    return f"{100 * diff['diff']:+5.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", type=Path, default=ROOT / "demo" / "policy")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--traffic", type=int, default=1000, help="traffic tasks whose failures are trained on")
    parser.add_argument("--heldout", type=int, default=500, help="held-out tasks measured per policy")
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps (default: the demo's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="also print every number as one JSON line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from demo.base_policy import demo_splits
    from demo.probe import Generator, failure_row, run_episodes
    from demo.report import format_rate, summarize_statuses
    from demo.run import comparison, demo_train_config
    from learner.rows import render_rows
    from learner.train import train

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    policy = str(args.policy)
    traffic, heldout = demo_splits(args.policy, args.traffic, args.heldout)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    base_model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    base_gen = Generator(base_model, tokenizer)
    answers = base_gen.answers(traffic)
    from demo.corpus import passes

    rows = [failure_row(item, text) for item, text in zip(traffic, answers, strict=True) if not passes(item, text)]
    base = run_episodes(base_gen, heldout)
    base_summary = summarize_statuses(base)
    config = demo_train_config() if args.steps is None else demo_train_config(args.steps)
    print(
        f"policy {args.policy.name}: {len(rows)} failures of {len(traffic)} traffic tasks to train on; "
        f"held-out n={len(heldout)}; GRPO {config.max_steps} steps, G={config.num_generations}, "
        f"lr {config.learning_rate:g}; seeds {args.seeds}",
        flush=True,
    )
    print(
        f"base: first attempt {format_rate(base_summary['first_attempt'])}, "
        f"after retry {format_rate(base_summary['after_retry'])}",
        flush=True,
    )
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rrr-learning-") as tmp:
        rendered = render_rows(rows, tokenizer)
        for seed in args.seeds:
            t = time.monotonic()
            out = Path(tmp) / f"seed-{seed}"
            result = train(dataclasses.replace(config, seed=seed), policy, rendered, out, resume=False)
            model = PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32), str(result.adapter_dir)
            )
            statuses = run_episodes(Generator(model, tokenizer, seed=seed), heldout)
            summary = summarize_statuses(statuses)
            rewards = [float(m["reward_mean"]) for m in result.metrics if "reward_mean" in m]
            flat = [float(m["frac_reward_zero_std"]) for m in result.metrics if "frac_reward_zero_std" in m]
            run = {
                "seed": seed,
                "seconds": round(time.monotonic() - t, 1),
                "reward_first_5": round(sum(rewards[:5]) / max(1, len(rewards[:5])), 4),
                "reward_last_5": round(sum(rewards[-5:]) / max(1, len(rewards[-5:])), 4),
                "zero_variance_mean": round(sum(flat) / max(1, len(flat)), 4),
                "first_attempt": summary["first_attempt"],
                "after_retry": summary["after_retry"],
                "comparison": comparison(base, statuses, label=f"seed {seed}", kind="candidate"),
            }
            runs.append(run)
            c = run["comparison"]
            rescue = c["rescue_among_base_failures"]
            print(
                f"seed {seed}: reward {run['reward_first_5']:.2f} -> {run['reward_last_5']:.2f} "
                f"(flat groups {100 * run['zero_variance_mean']:.0f}%); held-out first attempt "
                f"{format_rate(summary['first_attempt'])} ({_pts(c['first_attempt'])} pts), after retry "
                f"{format_rate(summary['after_retry'])} ({_pts(c['after_retry'])} pts); of the base's "
                f"{rescue['n']} failures answered: base {format_rate(rescue['base'])}, "
                f"adapter {format_rate(rescue['adapter'])}; "
                f"{run['seconds']:.0f} s",
                flush=True,
            )
    diffs = [r["comparison"]["after_retry"]["diff"] for r in runs]
    print(
        f"after-retry difference over {len(runs)} seeds: mean {100 * sum(diffs) / len(diffs):+.1f} pts, "
        f"min {100 * min(diffs):+.1f}, max {100 * max(diffs):+.1f}; {time.monotonic() - started:.0f} s in all"
    )
    if args.json:
        print(json.dumps({"base": base_summary, "failures": len(rows), "runs": runs}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
