"""The demo's synthetic tool-calling corpus: tasks with known answers, and reflection-shaped examples.

Who calls it: ``demo.sft`` (training data and the tokenizer's corpus), the demo traffic and
its evaluation (``items_to_records``: the repo's OpenAI JSONL shape with expected calls), tests.

* A task (``DemoItem``) is one user query for one tool of ``demo.catalog``, phrased by
  ``demo.phrases``, offered together with 1-3 shuffled distractor tools, with the one
  correct call as its reference answer.
* ``split_items`` draws the training and held-out sets from two seeds of one base seed; exact
  duplicates are dropped and no held-out query appears in training. Held-out items are balanced
  across tools so per-tool numbers and confidence intervals mean something.
* ``reflection_example`` turns a task into the conversation the serving loop has after a failed
  first attempt: the task, a failed call (a synthetic corruption — a wrong, missing, extra, swapped
  or unmapped value, the wrong tool, broken JSON — or, in the second supervised stage, the policy's
  own sampled failure), the reflection request, a reflection (the correct diagnosis, the generic
  one or a wrong diagnosis: ``demo.diagnosis``, never a restated call), the retry request, and the
  retry that does what the reflection says. ``REFLECTION_MIX`` sets how often each reflection is a
  target; ``RETRY_MIX`` how often each is in a conversation (its retry always trained). It is built
  with the very functions the loop uses (``agent.prompts`` over the engine's own message shape,
  ``engines.wire.build_chat_completion``), so training text equals serving text.

Everything is a pure function of its seed. Tokenising and loss masks are ``demo.sft``'s job.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from agent import prompts
from demo import diagnosis, phrases
from demo.catalog import TOOLS, TOOLS_BY_NAME
from engines.wire import build_chat_completion
from tools.parse import parse_openai_tool_calls
from tools.spec import ToolSpec
from tools.verify import ModelOutput, normalize_string, verify_reference

TOOL_NAMES = [t["function"]["name"] for t in TOOLS]
CORRUPTIONS = {
    "wrong_value": 0.4,
    "unmapped_value": 0.15,
    "missing_param": 0.15,
    "extra_param": 0.05,
    "swapped": 0.1,
    "wrong_tool": 0.1,
    "broken_json": 0.05,
}
"""Kinds of failed first attempts in reflection-shaped examples, weighted like a tiny model's errors."""


@dataclass(frozen=True)
class DemoItem:
    """One task: a query, the tools on offer (in prompt order) and the correct call."""

    id: str
    query: str
    tool_names: tuple[str, ...]
    name: str
    arguments: dict[str, Any]
    template: int

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [{"role": "user", "content": self.query}]

    @property
    def tools(self) -> list[dict[str, Any]]:
        return [TOOLS_BY_NAME[n] for n in self.tool_names]

    @property
    def call(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}

    @property
    def expected(self) -> list[dict[str, Any]]:
        """The reference answer as plain calls (what the API's ``rrr.expected_tool_calls`` takes)."""
        return [self.call]

    def to_record(self) -> dict[str, Any]:
        """The repo's OpenAI JSONL record (``tools.formats.openai_chat``), tagged with its tool."""
        return {
            "id": self.id,
            "messages": self.messages,
            "tools": self.tools,
            "expected_tool_calls": self.expected,
            "category": self.name,
        }


@dataclass(frozen=True)
class Conversation:
    """A training conversation: ``steps[k]`` = (prompt messages, target text the model should write).

    Every prompt extends the previous one by the previous target and the next user turn, so the
    whole conversation is one sequence whose targets are the only tokens with a loss.
    """

    tools: list[dict[str, Any]]
    steps: list[tuple[list[dict[str, Any]], str]]
    kind: str = "answer"
    variant: str | None = None
    """For reflection-shaped conversations: correct, generic or wrong (``REFLECTION_MIX``)."""
    failed_output: str | None = None
    """For reflection-shaped conversations: the raw text of the failed first attempt."""
    learn: tuple[bool, ...] | None = None
    """Per step, whether its target has a loss (None: every target). A reflection-shaped conversation
    can train the retry without training its reflection (``reflection_example``'s ``retry_mix``)."""


def call_text(name: str, arguments: dict[str, Any]) -> str:
    """A hermes tool call exactly as the chat template writes one in history."""
    return (
        '<tool_call>\n{"name": '
        + json.dumps(name, ensure_ascii=False)
        + ', "arguments": '
        + json.dumps(arguments, ensure_ascii=False)
        + "}\n</tool_call>"
    )


def _dress(rng: random.Random, query: str) -> str:
    """Chatty variety around the core request: a greeting before, a nudge before the end mark."""
    prefix, suffix = rng.choice(phrases.PREFIXES), rng.choice(phrases.SUFFIXES)
    if prefix:
        query = prefix + query[0].lower() + query[1:]
    if suffix:
        end = query[-1] if query[-1] in "?!." else ""
        query = query[: len(query) - len(end)] + suffix + end
    return query


def offer_tools(rng: random.Random, name: str | None = None) -> tuple[str, ...]:
    """A shuffled tool list: ``name`` (or any tool) plus 1-3 distinct distractors."""
    k = rng.randint(2, 4)
    if name is None:
        offered = rng.sample(TOOL_NAMES, k)
    else:
        offered = [name, *rng.sample([n for n in TOOL_NAMES if n != name], k - 1)]
        rng.shuffle(offered)
    return tuple(offered)


def make_item(
    rng: random.Random, name: str, index: int, prefix: str, offered: tuple[str, ...] | None = None
) -> DemoItem:
    template, query, arguments = phrases.GENERATORS[name](rng)
    tools = offered if offered is not None else offer_tools(rng, name)
    return DemoItem(
        id=f"{prefix}-{index:05d}",
        query=_dress(rng, query),
        tool_names=tools,
        name=name,
        arguments=arguments,
        template=template,
    )


def _key(item: DemoItem) -> tuple[str, tuple[str, ...]]:
    return item.query, item.tool_names


def generate_items(
    n: int,
    seed: int,
    *,
    prefix: str = "demo",
    balanced: bool = False,
    group_size: int = 1,
    exclude_queries: Iterable[str] = (),
    max_tries: int = 50,
) -> list[DemoItem]:
    """``n`` distinct tasks from ``seed``; tools drawn uniformly (or round-robin when ``balanced``).

    Queries in ``exclude_queries`` are skipped. With ``balanced``, tools take turns (so every prefix
    of the list is balanced too) and a query appears at most once. With ``group_size`` > 1, runs of
    that many consecutive tasks share one offered tool list (the task's tool drawn from it), which
    lets training compute the shared prompt once; each task's distribution is unchanged (a uniform
    tool and 1-3 uniform distractors in random order).
    """
    if group_size < 1 or (balanced and group_size > 1):
        raise ValueError("group_size must be >= 1, and 1 when balanced")
    rng = random.Random(f"rrr-demo-corpus/{seed}")
    excluded = set(exclude_queries)
    seen: set[Any] = set()
    items: list[DemoItem] = []
    tries = 0
    offered: tuple[str, ...] | None = None
    while len(items) < n:
        if group_size > 1:
            if offered is None or len(items) % group_size == 0:
                offered = offer_tools(rng)
            item = make_item(rng, rng.choice(offered), len(items), prefix, offered)
        else:
            name = TOOL_NAMES[len(items) % len(TOOL_NAMES)] if balanced else rng.choice(TOOL_NAMES)
            item = make_item(rng, name, len(items), prefix)
        key: Any = item.query if balanced else _key(item)
        if item.query in excluded or key in seen:
            tries += 1
            if tries > max_tries * max(n, 1):
                raise ValueError(f"could not draw {n} distinct items from seed {seed}: the phrase space is too small")
            continue
        seen.add(key)
        items.append(item)
    return items


def split_items(
    n_train: int, n_held_out: int, seed: int = 0, *, group_size: int = 1
) -> tuple[list[DemoItem], list[DemoItem]]:
    """Training tasks from ``seed`` and held-out tasks from another seed, sharing no query."""
    train = generate_items(n_train, seed * 2, prefix="train", group_size=group_size)
    held_out = generate_items(
        n_held_out, seed * 2 + 1, prefix="heldout", balanced=True, exclude_queries={it.query for it in train}
    )
    return train, held_out


def items_to_records(items: Sequence[DemoItem]) -> list[dict[str, Any]]:
    return [item.to_record() for item in items]


# --- reflection-shaped examples -------------------------------------------------------------------


def _other_value(rng: random.Random, name: str, param: str, value: Any) -> Any:
    """A plausible wrong value of the same type (digit slips for numbers, another option otherwise)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        text = str(value)
        digits = [i for i, ch in enumerate(text) if ch.isdigit()]
        for _ in range(20):
            i = rng.choice(digits)
            wrong_text = text[:i] + str(rng.choice([d for d in range(10) if str(d) != text[i]])) + text[i + 1 :]
            if not wrong_text.startswith("0") or wrong_text.startswith("0."):
                return type(value)(wrong_text)
        return value + 1
    schema = TOOLS_BY_NAME[name]["function"]["parameters"]["properties"][param]
    pools: list[Any] = schema.get("enum") or []
    if not pools:
        pools = {
            "city": phrases.CITIES,
            "origin": phrases.CITIES + phrases.PLACES,
            "destination": phrases.CITIES + phrases.PLACES,
            "from_currency": phrases.CURRENCY_CODES,
            "to_currency": phrases.CURRENCY_CODES,
            "title": phrases.EVENT_TITLES,
            "subject": phrases.SUBJECTS,
            "query": phrases.SEARCHES if name == "search_web" else phrases.MUSIC,
            "label": phrases.TIMER_LABELS,
            "text": phrases.PHRASES,
            "target_language": list(phrases.LANGUAGES.values()),
            "symbol": list(phrases.COMPANIES.values()),
            "restaurant": phrases.RESTAURANTS,
            "time": [f"{h:02d}:{m}" for h in range(7, 23) for m in ("00", "30")],
        }.get(param, [])
    if param == "to":
        local, _, domain = str(value).partition("@")
        return f"{local}@{rng.choice([d for d in phrases.DOMAINS if d != domain])}"
    options = [v for v in pools if v != value]
    return rng.choice(options) if options else f"{value}x"


def _unmapped(item: DemoItem) -> tuple[str, Any, Any] | None:
    """(param, the phrase the user wrote, the mapped value) for a value that needs mapping, if any."""
    query = f" {item.query}"
    for param, value in item.arguments.items():
        table = diagnosis.MAPPED_TABLES.get(param, {})
        written = [
            s
            for s, mapped in table.items()
            if mapped == value and f" {s}" in query and normalize_string(s) != normalize_string(str(value))
        ]
        # "dollars" inside "Canadian dollars" is not what the user wrote for USD
        written = [s for s in written if not any(s != k and s in k and f" {k}" in query for k in table)]
        if written:
            return param, written[0], value
    return None


def corrupt(item: DemoItem, rng: random.Random, kind: str | None = None) -> tuple[str, str]:
    """(kind, a failed model output) for ``item``: a wrong, mapped-but-copied, missing, extra or
    swapped value, the wrong tool, or broken JSON.

    The output is checked with the reference verifier: a corruption that happens to pass (a wrong
    value equal after BFCL's string normalisation) is drawn again.
    """
    for _ in range(20):
        kind_done, text = _corrupt_once(item, rng, kind)
        verdict = verify_reference(
            _model_output(text, item.tools), item.expected, [ToolSpec.from_openai(t) for t in item.tools]
        )
        if not verdict.ok:
            return kind_done, text
    raise ValueError(f"could not corrupt item {item.id} ({kind or 'any kind'})")


def _model_output(text: str, tools: list[dict[str, Any]]) -> ModelOutput:
    message = engine_message(text, tools)
    calls, error = parse_openai_tool_calls(message.get("tool_calls"), message.get("content"))
    return ModelOutput(tool_calls=calls, content=message.get("content"), parse_error=error)


def _swappable(item: DemoItem) -> list[tuple[str, str]]:
    params = list(item.arguments)
    return [
        (p, q)
        for i, p in enumerate(params)
        for q in params[i + 1 :]
        if type(item.arguments[p]) is type(item.arguments[q])
        and item.arguments[p] != item.arguments[q]
        and not TOOLS_BY_NAME[item.name]["function"]["parameters"]["properties"][p].get("enum")
    ]


def _corrupt_once(item: DemoItem, rng: random.Random, kind: str | None) -> tuple[str, str]:
    name, args = item.name, dict(item.arguments)
    props = TOOLS_BY_NAME[name]["function"]["parameters"]["properties"]
    required = TOOLS_BY_NAME[name]["function"]["parameters"]["required"]
    optional_absent = [p for p in props if p not in args]
    optional_present = [p for p in args if p not in required]
    kinds = [k for k in CORRUPTIONS if k != "unmapped_value" or _unmapped(item)]
    if not optional_absent:
        kinds.remove("extra_param")
    if not _swappable(item):
        kinds.remove("swapped")
    if kind not in kinds:
        kind = rng.choices(kinds, weights=[CORRUPTIONS[k] for k in kinds])[0]
    if kind == "wrong_value":
        param = rng.choice(list(args))
        args[param] = _other_value(rng, name, param, args[param])
    elif kind == "unmapped_value":
        param, said, _value = _unmapped(item) or ("", "", "")
        args[param] = said
    elif kind == "missing_param":
        del args[rng.choice(optional_present or list(args))]
    elif kind == "extra_param":
        param = rng.choice(optional_absent)
        schema = props[param]
        args[param] = (
            rng.choice(schema["enum"])
            if "enum" in schema
            else _other_value(rng, name, param, 5 if schema["type"] in ("integer", "number") else "")
        )
    elif kind == "swapped":
        p, q = rng.choice(_swappable(item))
        args[p], args[q] = args[q], args[p]
    elif kind == "wrong_tool":
        return kind, call_text(rng.choice([n for n in item.tool_names if n != name]), args)
    else:
        text = call_text(name, args)
        cut = rng.choice(
            [
                text.replace("}}", "}", 1),
                text.replace('"arguments": ', '"arguments" ', 1),
                text.replace("\n</tool_call>", "", 1).rstrip("}"),
            ]
        )
        return "broken_json", cut
    return kind, call_text(name, args)


def engine_message(text: str, tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message the engines return for ``text`` (hermes-parsed as vLLM does)."""
    wire_log = logging.getLogger(build_chat_completion.__module__)
    level = wire_log.level
    wire_log.setLevel(max(level, logging.WARNING))  # broken calls are intended here, not news
    try:
        body = build_chat_completion(
            text, "stop", model="demo", prompt_tokens=0, completion_tokens=0, tools=tools, tool_choice="auto"
        )
    finally:
        wire_log.setLevel(level)
    return dict(body["choices"][0]["message"])


VARIANTS = ("correct", "generic", "wrong")
REFLECTION_MIX: dict[str, float] = {"correct": 0.4, "generic": 0.35, "wrong": 0.25}
"""How often each kind of reflection is the supervised target after a failed call: the diagnosis habit
is there but weak (greedy reflections are often generic, sampled ones sometimes right), which is what
GRPO then strengthens. Every variant's retry target follows its reflection (``demo.diagnosis.follow``)."""


def reflection_variant(item: DemoItem, failed_text: str, variant: str, rng: random.Random) -> tuple[str, str] | None:
    """(reflection, retry target) of one variant after ``failed_text``; None if it has no such variant."""
    failed = diagnosis.FailedCall.parse(failed_text)
    faults = diagnosis.diagnose(item, failed)
    if not faults:
        return None
    if variant == "correct":
        return diagnosis.reflection_text(item, faults), diagnosis.follow(item, failed, faults)
    if variant == "generic":
        return diagnosis.GENERIC, diagnosis.follow(item, failed, [])
    if variant == "wrong":
        return diagnosis.wrong_diagnosis(item, failed, rng)
    raise ValueError(f"unknown reflection variant {variant!r}; expected one of {VARIANTS}")


def reflection_conversation(
    item: DemoItem,
    failed_text: str,
    reflection: str,
    retry: str,
    *,
    kind: str,
    variant: str,
    reason: str | None = None,
) -> Conversation:
    """Task, the failed output, reflection request, ``reflection``, retry request, ``retry``: exactly
    the conversation the serving loop has (``agent.prompts`` over the engine's message shape)."""
    message = engine_message(failed_text, item.tools)
    failed = prompts.failed_assistant_message(message.get("content"), message.get("tool_calls"))
    reflect_history = prompts.reflection_messages(item.messages, failed, reason)
    retry_history = prompts.retry_messages(reflect_history, reflection)
    return Conversation(
        tools=item.tools,
        kind=f"reflect/{kind}",
        variant=variant,
        failed_output=failed_text,
        steps=[(reflect_history, reflection), (retry_history, retry)],
    )


RETRY_MIX: dict[str, float] = {"correct": 0.7, "generic": 0.15, "wrong": 0.15}
"""How often each reflection variant is in a conversation (its retry always trained): mostly the
correct diagnosis, so that following a reflection is learnt; the reflection itself is trained on a
subset chosen so that the reflections the model learns to write follow ``REFLECTION_MIX``."""


def draw_variant(rng: random.Random, mix: dict[str, float] | None = None) -> str:
    mix = mix or REFLECTION_MIX
    return rng.choices(list(mix), weights=list(mix.values()))[0]


def reflection_loss_odds(mix: dict[str, float], retry_mix: dict[str, float]) -> dict[str, float]:
    """Per variant, the probability that a conversation drawn from ``retry_mix`` trains its reflection,
    so that the trained reflections are distributed as ``mix``."""
    ratios = {v: (mix.get(v, 0.0) / retry_mix[v]) if retry_mix.get(v) else 0.0 for v in retry_mix}
    top = max(ratios.values()) or 1.0
    return {v: r / top for v, r in ratios.items()}


def reflection_example(
    item: DemoItem,
    rng: random.Random,
    kind: str | None = None,
    reason: str | None = None,
    *,
    variant: str | None = None,
    failed_text: str | None = None,
    mix: dict[str, float] | None = None,
    retry_mix: dict[str, float] | None = None,
) -> Conversation:
    """A reflection-shaped conversation on a synthetic corruption of ``item`` (or on ``failed_text``).

    ``variant`` (drawn from ``retry_mix``, else ``mix``, when None; a variant the failure does not allow falls back to
    the correct one): the correct diagnosis, the generic reflection or a wrong diagnosis, each
    followed by the retry that does what it says. ``reason`` adds the verifier's words to the
    reflection request, as the loop does when ``LoopConfig.reflection_with_reason`` is on (off by
    default, as in the paper).
    """
    if failed_text is None:
        kind, failed_text = corrupt(item, rng, kind)
    kind = kind or "own"
    chosen = variant or draw_variant(rng, retry_mix or mix)
    pair = reflection_variant(item, failed_text, chosen, rng)
    if pair is None:
        chosen, pair = "correct", reflection_variant(item, failed_text, "correct", rng)
    if pair is None:
        raise ValueError(f"{failed_text!r} is not a failed answer to item {item.id}")
    conversation = reflection_conversation(
        item, failed_text, pair[0], pair[1], kind=kind, variant=chosen, reason=reason
    )
    if retry_mix is not None:
        odds = reflection_loss_odds(mix or REFLECTION_MIX, retry_mix)
        conversation = replace(conversation, learn=(rng.random() < odds.get(chosen, 1.0), True))
    return conversation


def answer_example(item: DemoItem) -> Conversation:
    return Conversation(tools=item.tools, steps=[(item.messages, call_text(item.name, item.arguments))])


def training_conversations(
    items: Sequence[DemoItem],
    *,
    reflection_share: float = 0.1,
    seed: int = 0,
    mix: dict[str, float] | None = None,
    retry_mix: dict[str, float] | None = None,
) -> list[Conversation]:
    """One first-attempt conversation per item, plus reflection-shaped ones on ``reflection_share`` of
    the items (a fraction of all conversations), shuffled by ``seed``."""
    if not 0 <= reflection_share < 1:
        raise ValueError("reflection_share must be in [0, 1)")
    rng = random.Random(f"rrr-demo-reflections/{seed}")
    n_reflect = round(len(items) * reflection_share / (1 - reflection_share))
    conversations = [answer_example(item) for item in items]
    for item in rng.sample(list(items), min(n_reflect, len(items))):
        conversations.append(reflection_example(item, rng, mix=mix, retry_mix=retry_mix))
    rng.shuffle(conversations)
    return conversations


def passes(item: DemoItem, text: str) -> bool:
    """Whether the model output ``text`` answers ``item`` (the reference verifier, as the demo traffic is checked)."""
    verdict = verify_reference(
        _model_output(text, item.tools), item.expected, [ToolSpec.from_openai(t) for t in item.tools]
    )
    return verdict.ok
