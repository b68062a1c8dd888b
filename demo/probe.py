"""Batched measurements of the demo policy's reflect -> retry behaviour, for its recipe (not the demo's numbers).

Who calls it: ``demo.sft`` (the second supervised stage samples the stage-1 model's own failures on
training tasks; progress of the correct-vs-generic reflection gap; the recipe checks written into
``sft.json``), ``rrr demo check-policy`` and tests.

Prompts are rendered exactly as serving renders them (``demo.sft.render_prompt`` over
``agent.prompts``), generation is Hugging Face ``generate`` in left-padded batches (many times
faster on a CPU than the serving engine's one-request-at-a-time loop) and answers are verified with
the reference verifier, as the demo's traffic is. All of it runs on a dev split: tasks from a seed
of their own that share no query with the training set or the held-out set (``dev_items``), so the
recipe is never tuned on the held-out set.

``recipe_checks`` measures, on the policy's own greedy first-attempt failures of the dev tasks:

* ``correct_rescue``: the retry after the correct diagnosis (``demo.diagnosis.reflection_text``),
* ``generic_rescue``: the retry after ``demo.diagnosis.GENERIC``,
* ``greedy_rescue``: the policy's own greedy reflection then a greedy retry (what serving does),
* ``zero_variance``: the share of failures whose ``group_size`` sampled reflections (temperature
  1, greedy retries: GRPO's reward) all score the same, and ``sampled_reward`` their mean,
* ``restated``: the share of sampled reflections that restate a call (``demo.diagnosis.restates_call``),

each with a 95% Wilson interval, against the thresholds the issue set (``THRESHOLDS``).
torch/transformers are imported lazily.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent import prompts
from demo import diagnosis
from demo.corpus import DemoItem, engine_message, generate_items, passes, split_items

log = logging.getLogger(__name__)

THRESHOLDS: dict[str, tuple[str, float]] = {
    "correct_rescue": (">=", 0.80),
    "generic_rescue": ("<=", 0.10),
    "greedy_rescue_low": (">=", 0.10),
    "greedy_rescue_high": ("<=", 0.30),
    "zero_variance": ("<", 0.40),
    "restated": ("<", 0.05),
}
"""The preconditions of the paper's mechanism, checked on the dev split before any held-out number."""
DEV_SEED_OFFSET = 7919
HELD_OUT_GUARD = 2000
"""Dev tasks exclude the first this-many held-out tasks (the demo measures 500)."""


def dev_items(n: int, config: Any) -> list[DemoItem]:
    """``n`` dev tasks of the policy built with ``config`` (an ``SFTConfig``): balanced over tools, no query
    of its training set and none of its held-out set."""
    train, held_out = split_items(config.n_train_items, HELD_OUT_GUARD, config.seed, group_size=config.group_size)
    excluded = {item.query for item in train} | {item.query for item in held_out}
    return generate_items(n, config.seed * 2 + DEV_SEED_OFFSET, prefix="dev", balanced=True, exclude_queries=excluded)


class Generator:
    """Left-padded batched generation with a causal LM, decoded the way the serving engine decodes."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 48, seed: int = 0) -> None:
        from demo.sft import SegmentEncoder

        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.encode = SegmentEncoder(tokenizer)
        self.seed = seed
        self._calls = 0

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
        from demo.sft import render_prompt

        return render_prompt(self.tokenizer, messages, tools)

    def complete(self, prompts_text: Sequence[str], max_new_tokens: int, temperature: float = 0.0) -> list[str]:
        """One completion per prompt (special tokens skipped, cut at the end-of-turn token)."""
        import torch

        self._calls += 1
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        encoded = [self.encode(p) for p in prompts_text]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out: list[str] = [""] * len(encoded)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1_000_003 + self._calls)
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start : start + self.batch_size]
                    width = max(len(encoded[i]) for i in chunk)
                    ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in chunk])
                    mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in chunk])
                    kwargs: dict[str, Any] = {"do_sample": False}
                    if temperature > 0:
                        kwargs = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                    gen = self.model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        max_new_tokens=max_new_tokens,
                        eos_token_id=tok.eos_token_id,
                        pad_token_id=pad,
                        **kwargs,
                    )
                    for row, i in enumerate(chunk):
                        new = gen[row, width:].tolist()
                        if tok.eos_token_id in new:
                            new = new[: new.index(tok.eos_token_id)]
                        out[i] = tok.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        finally:
            self.model.train(was_training)
        return out

    # the three calls of an episode

    def answers(self, items: Sequence[DemoItem], *, temperature: float = 0.0, max_new_tokens: int = 96) -> list[str]:
        return self.complete([self.render(it.messages, it.tools) for it in items], max_new_tokens, temperature)

    def reflections(
        self, cases: Sequence[tuple[DemoItem, str]], *, temperature: float = 0.0, max_new_tokens: int = 32
    ) -> list[str]:
        texts = [self.render(reflection_history(item, failed), item.tools) for item, failed in cases]
        return self.complete(texts, max_new_tokens, temperature)

    def retries(self, cases: Sequence[tuple[DemoItem, str, str]], *, max_new_tokens: int = 96) -> list[str]:
        texts = [
            self.render(prompts.retry_messages(reflection_history(item, failed), reflection), item.tools)
            for item, failed, reflection in cases
        ]
        return self.complete(texts, max_new_tokens, 0.0)


def reflection_history(item: DemoItem, failed_text: str) -> list[dict[str, Any]]:
    """The messages of the reflection call after ``failed_text``, as the serving loop builds them."""
    message = engine_message(failed_text, item.tools)
    failed = prompts.failed_assistant_message(message.get("content"), message.get("tool_calls"))
    return prompts.reflection_messages(item.messages, failed)


def own_failures(
    gen: Generator, items: Sequence[DemoItem], *, temperature: float = 0.0, max_new_tokens: int = 96
) -> list[tuple[DemoItem, str]]:
    """(task, the policy's failed first attempt) for every task it answers wrongly."""
    texts = gen.answers(items, temperature=temperature, max_new_tokens=max_new_tokens)
    return [(item, text) for item, text in zip(items, texts, strict=True) if not passes(item, text)]


def rescue_rate(gen: Generator, cases: Sequence[tuple[DemoItem, str, str]]) -> tuple[int, int]:
    """(retries that pass, cases) for (task, failed text, reflection) triples."""
    if not cases:
        return 0, 0
    retries = gen.retries(cases)
    return sum(passes(item, text) for (item, _, _), text in zip(cases, retries, strict=True)), len(cases)


def diagnosis_gap(gen: Generator, failures: Sequence[tuple[DemoItem, str]]) -> dict[str, Any]:
    """Retry success after the correct diagnosis vs after the generic reflection, on ``failures``."""
    correct, generic = [], []
    for item, failed in failures:
        faults = diagnosis.diagnose(item, diagnosis.FailedCall.parse(failed))
        correct.append((item, failed, diagnosis.reflection_text(item, faults)))
        generic.append((item, failed, diagnosis.GENERIC))
    ok_c, n = rescue_rate(gen, correct)
    ok_g, _ = rescue_rate(gen, generic)
    return {"n": n, "correct_rescue": ok_c / n if n else 0.0, "generic_rescue": ok_g / n if n else 0.0}


@dataclass(frozen=True)
class CheckSettings:
    dev_items: int = 600
    group_size: int = 8
    reflection_max_tokens: int = 32
    temperature: float = 1.0


def _rate(successes: int, n: int) -> dict[str, Any]:
    from evals.stats import wilson_interval

    lo, hi = wilson_interval(successes, n)
    return {"rate": successes / n if n else 0.0, "successes": successes, "n": n, "ci95": [lo, hi]}


def recipe_checks(
    gen: Generator, items: Sequence[DemoItem], settings: CheckSettings = CheckSettings()
) -> dict[str, Any]:
    """Every number of the module docstring on ``items`` (dev tasks), with the thresholds and whether each holds."""
    answers = gen.answers(items)
    ok = [passes(item, text) for item, text in zip(items, answers, strict=True)]
    failures = [(item, text) for item, text, good in zip(items, answers, ok, strict=True) if not good]
    gap = diagnosis_gap(gen, failures)
    own = gen.reflections(failures, max_new_tokens=settings.reflection_max_tokens)
    greedy_ok, _ = rescue_rate(gen, [(i, f, r) for (i, f), r in zip(failures, own, strict=True)])
    g = settings.group_size
    expanded = [case for case in failures for _ in range(g)]
    sampled = gen.reflections(expanded, temperature=settings.temperature, max_new_tokens=settings.reflection_max_tokens)
    retries = gen.retries([(i, f, r) for (i, f), r in zip(expanded, sampled, strict=True)])
    rewards = [passes(item, text) for (item, _), text in zip(expanded, retries, strict=True)]
    groups = [rewards[k : k + g] for k in range(0, len(rewards), g)]
    flat = sum(len(set(group)) == 1 for group in groups)
    restated = sum(diagnosis.restates_call(item, r) for (item, _), r in zip(expanded, sampled, strict=True))
    n_fail = len(failures)
    result: dict[str, Any] = {
        "dev_items": len(items),
        "first_attempt": _rate(sum(ok), len(items)),
        "failures": n_fail,
        "correct_rescue": _rate(round(gap["correct_rescue"] * n_fail), n_fail),
        "generic_rescue": _rate(round(gap["generic_rescue"] * n_fail), n_fail),
        "greedy_rescue": _rate(greedy_ok, n_fail),
        "zero_variance": _rate(flat, len(groups)),
        "sampled_reward": _rate(sum(rewards), len(rewards)),
        "restated": _rate(restated, len(sampled)),
        "group_size": g,
        "distinct_reflections": len(set(sampled)),
        "examples": [
            {"query": item.query, "failed": failed, "greedy_reflection": r}
            for (item, failed), r in list(zip(failures, own, strict=True))[:12]
        ],
    }
    result["thresholds"] = _judge(result)
    return result


def _judge(result: dict[str, Any]) -> dict[str, Any]:
    value = {
        "correct_rescue": result["correct_rescue"]["rate"],
        "generic_rescue": result["generic_rescue"]["rate"],
        "greedy_rescue_low": result["greedy_rescue"]["rate"],
        "greedy_rescue_high": result["greedy_rescue"]["rate"],
        "zero_variance": result["zero_variance"]["rate"],
        "restated": result["restated"]["rate"],
    }
    out = {}
    for name, (op, bound) in THRESHOLDS.items():
        v = value[name]
        held = {">=": v >= bound, "<=": v <= bound, "<": v < bound}[op]
        out[name] = {"value": round(v, 4), "rule": f"{op} {bound}", "holds": held}
    return out


def format_checks(result: dict[str, Any]) -> str:
    def pct(rate: dict[str, Any]) -> str:
        lo, hi = rate["ci95"]
        return f"{100 * rate['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({rate['successes']}/{rate['n']})"

    lines = [
        f"dev tasks: {result['dev_items']}, first attempt {pct(result['first_attempt'])}, "
        f"failures {result['failures']}",
        f"retry after the correct diagnosis: {pct(result['correct_rescue'])}",
        f"retry after the generic reflection: {pct(result['generic_rescue'])}",
        f"greedy reflection + retry (serving): {pct(result['greedy_rescue'])}",
        f"groups of {result['group_size']} sampled reflections without reward variance: {pct(result['zero_variance'])}",
        f"sampled reward: {pct(result['sampled_reward'])}; reflections restating a call: {pct(result['restated'])}",
    ]
    lines += [
        f"  {name:20s} {check['value']:.3f} {check['rule']:8s} {'ok' if check['holds'] else 'NOT MET'}"
        for name, check in result["thresholds"].items()
    ]
    return "\n".join(lines)


def run_episodes(
    gen: Generator, items: Sequence[DemoItem], *, reflection_max_tokens: int = 32, max_new_tokens: int = 96
) -> dict[str, str]:
    """Task id -> ``first_ok`` | ``retry_ok`` | ``failed``: greedy answer, then on failure one greedy
    reflection and one greedy retry, the serving loop's episode (the reference verifier)."""
    answers = gen.answers(items, max_new_tokens=max_new_tokens)
    statuses = {item.id: "first_ok" for item, text in zip(items, answers, strict=True) if passes(item, text)}
    failures = [(item, text) for item, text in zip(items, answers, strict=True) if item.id not in statuses]
    reflections = gen.reflections(failures, max_new_tokens=reflection_max_tokens)
    cases = [(item, failed, r) for (item, failed), r in zip(failures, reflections, strict=True)]
    retries = gen.retries(cases, max_new_tokens=max_new_tokens) if cases else []
    for (item, _, _), text in zip(cases, retries, strict=True):
        statuses[item.id] = "retry_ok" if passes(item, text) else "failed"
    return {item.id: statuses[item.id] for item in items}


def failure_row(item: DemoItem, failed_text: str) -> dict[str, Any]:
    """The learner's training row (``learner.rows.FailureRow``) for ``item``'s failed first attempt, as
    ``learner.dataset`` builds it from a recorded episode."""
    from tools.verifiers.specs import VerifierSpec

    return {
        "episode_id": item.id,
        "client_key_id": None,
        "task_messages": item.messages,
        "prompt_messages": reflection_history(item, failed_text),
        "tools": item.tools,
        "tool_choice": None,
        "verifier": VerifierSpec.parse("reference").to_json(),
        "expected": item.expected,
    }
