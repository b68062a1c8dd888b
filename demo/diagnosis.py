"""What the demo policy's reflections say: diagnoses that point at the evidence, never the corrected call.

Who calls it: ``demo.corpus`` (reflection-shaped training conversations, on synthetic corruptions
and, in the second supervised stage, on the policy's own failures), ``demo.probe`` (the recipe
checks: rescue after the correct diagnosis vs after a generic one), tests.

A reflection may contain, and the README says so:

* the parameter whose value is wrong, and the span of the request its value must come from,
  quoted: ``destination should be "the harbour".``; for a value that must be mapped rather than
  copied: ``unit should come from "°F".``;
* a parameter that is missing (with its span), one that is not in the request, a swapped pair
  (``origin and destination are swapped.``), the tool the request needs (``The request needs
  get_weather.``), or that the call was not valid JSON or not a call at all;
* or nothing useful: ``I should read the request again.`` (``GENERIC``).

It never contains a tool call, JSON or the whole corrected argument set (``restates_call``
checks). ``diagnose`` finds the faults of a failed call against the task's reference answer;
``reflection_text`` writes the correct diagnosis; ``wrong_diagnosis`` a plausible wrong one;
``follow`` is what a retry that does exactly what a reflection says produces: the correct call
after the correct diagnosis, the failed call changed only where the reflection points otherwise.
Pure functions of their inputs (and an explicit ``random.Random``); no model here.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from demo import phrases
from tools.parse import parse_hermes
from tools.verify import normalize_string

GENERIC = "I should read the request again."
"""The uninformative reflection: after it, a retry that follows reflections repeats the failed call."""

FaultKind = Literal[
    "wrong_value", "missing_param", "extra_param", "swapped", "wrong_tool", "broken_json", "no_call", "extra_call"
]
STRUCTURAL: frozenset[str] = frozenset({"wrong_tool", "broken_json", "no_call", "extra_call"})
"""Faults whose fix is the whole call: after the right diagnosis the retry writes the correct call."""

MAPPED_TABLES: dict[str, dict[str, Any]] = {
    "unit": phrases.UNIT_PHRASES,
    "from_currency": phrases.CURRENCY_NAMES,
    "to_currency": phrases.CURRENCY_NAMES,
    "day": phrases.WEEKDAYS,
    "target_language": phrases.LANGUAGES,
    "symbol": phrases.COMPANIES,
    "party_size": phrases.PARTY_WORDS,
    "mode": phrases.MODE_PHRASES,
    "minutes": phrases.TIMER_PHRASES,
}
"""Parameters whose value the user may write as a phrase to be mapped ("°F" -> fahrenheit, "four" -> 4)."""
_PM_TIME = re.compile(r"\b(\d{1,2})(?::(\d\d))? pm\b")


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    params: tuple[str, ...] = ()


@dataclass(frozen=True)
class FailedCall:
    """A failed first attempt as text, and the one call in it when it parsed as exactly one."""

    text: str
    name: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> FailedCall:
        parsed = parse_hermes(text)
        if parsed.tools_called and len(parsed.tool_calls) == 1:
            call = parsed.tool_calls[0]
            return cls(text=text, name=call.name, arguments=dict(call.arguments))
        return cls(text=text)


def _json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _same(a: Any, b: Any) -> bool:
    """Equal the way the reference verifier compares a value (numbers by value, strings normalised)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    if isinstance(a, str) and isinstance(b, str):
        return normalize_string(a) == normalize_string(b)
    return bool(a == b)


def value_span(query: str, param: str, value: Any) -> tuple[str, bool] | None:
    """(the span of ``query`` that ``value`` comes from, whether it must be mapped), or None.

    A copied value is found as a whole word (case-insensitive); a mapped one through the phrase
    tables ("°F" -> fahrenheit, "yen" -> JPY, "four" -> 4, "7 pm" -> 19:00).
    """
    padded = f" {query} "
    table = dict(MAPPED_TABLES.get(param, {}))
    table.update({k[3:]: v for k, v in table.items() if k.startswith("in ")})  # "Tell me ..., metric"
    written = [
        s for s, mapped in table.items() if mapped == value and re.search(rf"(?<!\w){re.escape(s)}(?!\w)", query)
    ]
    written = [s for s in written if not any(s != k and s in k and f" {k}" in padded for k in table)]
    text = _json(value)
    match = re.search(rf"(?<![\w.@]){re.escape(text)}(?![\w@]|\.\d)", query, flags=re.IGNORECASE)
    if match:
        return query[match.start() : match.end()], False
    if written:
        longest = max(written, key=len)
        return longest, True
    if param == "time" and isinstance(value, str):
        for m in _PM_TIME.finditer(query):
            hour = phrases.PM_HOURS.get(m.group(1))
            if hour is not None and f"{hour:02d}:{m.group(2) or '00'}" == value:
                return m.group(0), True
    return None


def diagnose(item: Any, failed: FailedCall) -> list[Fault]:
    """The faults of ``failed`` against ``item``'s reference call (``item``: a ``DemoItem``).

    Empty when the call is right (nothing to diagnose). Wrong values that are each other's
    correct value are one ``swapped`` fault.
    """
    parsed = parse_hermes(failed.text)
    if not parsed.tools_called:
        return [Fault("broken_json" if "<tool_call>" in failed.text else "no_call")]
    if len(parsed.tool_calls) != 1:
        return [Fault("extra_call")]
    if failed.name != item.name:
        return [Fault("wrong_tool")]
    want, got = item.arguments, failed.arguments
    wrong = [p for p in want if p in got and not _same(got[p], want[p])]
    faults: list[Fault] = []
    paired: set[str] = set()
    for i, p in enumerate(wrong):
        for q in wrong[i + 1 :]:
            if p not in paired and q not in paired and _same(got[p], want[q]) and _same(got[q], want[p]):
                faults.append(Fault("swapped", (p, q)))
                paired |= {p, q}
    faults += [Fault("wrong_value", (p,)) for p in wrong if p not in paired]
    faults += [Fault("missing_param", (p,)) for p in want if p not in got]
    faults += [Fault("extra_param", (p,)) for p in got if p not in want]
    return faults


def _sentence(item: Any, fault: Fault, value_of: dict[str, Any] | None = None) -> str:
    """One diagnosis sentence; ``value_of`` overrides the value a wrong_value/missing points at."""
    value_of = value_of or {}
    if fault.kind in ("wrong_value", "missing_param"):
        param = fault.params[0]
        value = value_of.get(param, item.arguments.get(param))
        span = value_span(item.query, param, value)
        if fault.kind == "missing_param":
            return f'I left out {param}: "{span[0]}".' if span else f"I left out {param}."
        if span is None:
            return f"{param} is wrong."
        return f'{param} should {"come from" if span[1] else "be"} "{span[0]}".'
    if fault.kind == "extra_param":
        return f"{fault.params[0]} is not in the request."
    if fault.kind == "swapped":
        return f"{fault.params[0]} and {fault.params[1]} are swapped."
    if fault.kind == "wrong_tool":
        return f"The request needs {item.name}."
    if fault.kind == "broken_json":
        return "My call was not valid JSON."
    if fault.kind == "extra_call":
        return "I must make exactly one call."
    return "I must answer with a tool call."


def reflection_text(item: Any, faults: Sequence[Fault], max_faults: int = 3) -> str:
    """The correct diagnosis of ``faults`` (at most ``max_faults`` sentences), or GENERIC if none."""
    if not faults:
        return GENERIC
    return " ".join(_sentence(item, f) for f in faults[:max_faults])


def follow(item: Any, failed: FailedCall, pointed: Sequence[Fault], value_of: dict[str, Any] | None = None) -> str:
    """The retry a model that does exactly what the reflection says writes.

    ``pointed``: the faults the reflection names (with ``value_of`` the values its quoted spans
    give, when they differ from the reference). A structural fault named -> the correct call; a
    parseable failed call otherwise changed only where pointed; an unparseable one repeated.
    """
    from demo.corpus import call_text

    value_of = value_of or {}
    if any(f.kind in STRUCTURAL for f in pointed):
        return call_text(item.name, item.arguments)
    if failed.name is None:
        return failed.text
    args = dict(failed.arguments)
    for fault in pointed:
        if fault.kind in ("wrong_value", "missing_param"):
            param = fault.params[0]
            args[param] = value_of.get(param, item.arguments[param])
        elif fault.kind == "extra_param":
            args.pop(fault.params[0], None)
        elif fault.kind == "swapped":
            p, q = fault.params
            if p in args and q in args:
                args[p], args[q] = args[q], args[p]
    order = [p for p in item.arguments if p in args] + [p for p in args if p not in item.arguments]
    return call_text(failed.name, {p: args[p] for p in order})


def wrong_diagnosis(item: Any, failed: FailedCall, rng: random.Random) -> tuple[str, str] | None:
    """(a plausible but wrong diagnosis, the retry that follows it), or None if none exists.

    Either it names a parameter that was right (its span quoted: following it changes nothing), or
    it quotes another value's span for a wrong parameter (following it writes that other value).
    """
    faults = diagnose(item, failed)
    if not faults or failed.name != item.name or any(f.kind in STRUCTURAL for f in faults):
        return None
    faulty = {p for f in faults for p in f.params}
    right = [
        p
        for p in item.arguments
        if p in failed.arguments and p not in faulty and value_span(item.query, p, item.arguments[p])
    ]
    options: list[tuple[str, str]] = []
    for p in right:
        fault = Fault("wrong_value", (p,))
        options.append((_sentence(item, fault), follow(item, failed, [fault])))
    wrong_params = [f.params[0] for f in faults if f.kind == "wrong_value"]
    for p in wrong_params:
        for q in item.arguments:
            if q == p or type(item.arguments[q]) is not type(item.arguments[p]):
                continue
            value = item.arguments[q]
            if _same(value, item.arguments[p]) or value_span(item.query, p, value) is None:
                continue
            fault = Fault("wrong_value", (p,))
            options.append((_sentence(item, fault, {p: value}), follow(item, failed, [fault], {p: value})))
    return rng.choice(options) if options else None


_CALL_MARKS = re.compile(r"<tool_call>|\{\s*\"|\"arguments\"")


def restates_call(item: Any, reflection: str) -> bool:
    """Whether ``reflection`` restates a call: any call/JSON syntax, or the tool name with every argument
    value of a call of two or more arguments."""
    if _CALL_MARKS.search(reflection):
        return True
    values = [_json(v) for v in item.arguments.values()]
    if len(values) < 2:
        return False
    low = reflection.lower()
    return item.name in reflection and all(v.lower() in low for v in values)
