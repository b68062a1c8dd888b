"""Serialisable verifier specs: validate them, run them, and say whether they can be re-run offline.

A spec is JSON, stored with each episode so the learner can re-run the same verifier on a retry:
``"schema"``, ``"reference"``, ``"relevance"`` (some well-formed call; BFCL live_relevance),
``{"type": "execution", "functions": {tool: "module:function"},
"timeout_s": 5}``, ``{"type": "countdown", "nums": [...], "target": N}`` and
``{"type": "all", "of": [spec, ...]}`` (every one must pass; the first failure gives the reason),
``{"type": "grounded", "arguments"?: [...], "ignore"?: [...]}`` (values traceable to the
conversation, ``tools.verifiers.grounded``), ``{"type": "rules", "rules": ["a < b", ...]}``
(``tools.verifiers.rules``), ``{"type": "plugin", "name": ..., "params"?: {...}, "timeout_s"?}``
(an installed entry point, ``tools.verifiers.plugin``), ``{"type": "webhook", "name": ...,
"rerunnable": bool}`` (an endpoint of the operator's policy, ``tools.verifiers.webhook``) and
``{"type": "for_tool", "tool": name, "check": spec}`` (``check`` judges only that tool's calls;
no such call passes). Plugins and webhooks are looked up by name in a ``VerifierContext`` (the
operator's policy); a spec never carries a URL or a module path.
A bad spec raises ValueError with what to change; bad model output only ever yields a verdict.

A run takes the request's ``VerificationBudget``: a leaf started after it is spent fails with its
reason, JSON-Schema pattern searches are charged to it, and the distinct `execution` leaves of a
spec run concurrently (each once, however often it is repeated) before the leaves are judged in
order. ``VerifierSpec.cost`` is what a client's spec costs per answer, capped at the API.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tools.schema import regex_budget
from tools.spec import ToolSpec
from tools.verifiers.base import UNBOUNDED, ModelOutput, Verdict, VerificationBudget, failed, passed
from tools.verifiers.countdown import verify_countdown
from tools.verifiers.execution import (
    DEFAULT_EXECUTION_MODULES,
    MAX_CONCURRENT_PROCESSES,
    check_target,
    verify_execution,
)
from tools.verifiers.grounded import verify_grounded
from tools.verifiers.plugin import DEFAULT_TIMEOUT_S as PLUGIN_TIMEOUT_S
from tools.verifiers.plugin import verify_plugin
from tools.verifiers.reference import verify_reference
from tools.verifiers.relevance import verify_relevance
from tools.verifiers.rules import MAX_RULES, parse_rule, verify_rules
from tools.verifiers.schema_check import verify_schema
from tools.verifiers.webhook import Webhook, verify_webhook

VERIFIER_TYPES = (
    "schema",
    "reference",
    "relevance",
    "execution",
    "countdown",
    "grounded",
    "rules",
    "plugin",
    "webhook",
    "for_tool",
    "all",
)
_FIELDS = {
    "schema": (),
    "reference": (),
    "relevance": (),
    "execution": ("functions", "timeout_s"),
    "countdown": ("nums", "target"),
    "grounded": ("arguments", "ignore"),
    "rules": ("rules",),
    "plugin": ("name", "params", "timeout_s"),
    "webhook": ("name", "rerunnable"),
    "for_tool": ("tool", "check"),
    "all": ("of",),
}
MAX_NAME_CHARS = 200
DEFAULT_TIMEOUT_S = 5.0
MAX_TIMEOUT_S = 60.0
MAX_NESTING = 4
MAX_PARTS = 16
MAX_NUMS = 32


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# Complexity: one branch per verifier kind and field.
def _normalize(spec: Any, allowed_modules: tuple[str, ...], depth: int) -> dict[str, Any]:  # noqa: C901
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            try:
                spec = json.loads(text)
            except ValueError:
                raise ValueError("verifier spec is not valid JSON") from None
        else:
            spec = {"type": text}
    if not isinstance(spec, dict):
        raise ValueError(f'a verifier spec is a name or an object with a "type", got {type(spec).__name__}')
    kind = spec.get("type")
    if kind not in _FIELDS:
        raise ValueError(f"unknown verifier type {kind!r}; use one of: {', '.join(VERIFIER_TYPES)}")
    unknown = sorted(set(spec) - {"type", *_FIELDS[kind]})
    if unknown:
        allowed = ", ".join(_FIELDS[kind]) or "no fields"
        raise ValueError(f"verifier {kind!r} does not take {', '.join(map(repr, unknown))} (it takes {allowed})")

    if kind in ("schema", "reference", "relevance"):
        return {"type": kind}
    if kind in ("grounded", "rules", "plugin", "webhook", "for_tool"):
        return _normalize_policy_kind(kind, spec, allowed_modules, depth)
    if kind == "execution":
        functions = spec.get("functions")
        if not isinstance(functions, dict) or not functions:
            raise ValueError('an execution verifier needs "functions": {"tool_name": "package.module:function"}')
        for name, target in functions.items():
            refusal = check_target(target, allowed_modules)
            if refusal:
                raise ValueError(f"execution verifier, tool {name!r}: {refusal}")
        timeout = spec.get("timeout_s", DEFAULT_TIMEOUT_S)
        if not _is_number(timeout) or not 0 < timeout <= MAX_TIMEOUT_S:
            raise ValueError(f"execution verifier: timeout_s must be a number in (0, {MAX_TIMEOUT_S:g}]")
        return {"type": kind, "functions": dict(sorted(functions.items())), "timeout_s": float(timeout)}
    if kind == "countdown":
        nums, target = spec.get("nums"), spec.get("target")
        if (
            not isinstance(nums, list)
            or not 0 < len(nums) <= MAX_NUMS
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in nums)
        ):
            raise ValueError(f"countdown verifier: nums must be a list of 1 to {MAX_NUMS} non-negative integers")
        if not _is_number(target):
            raise ValueError("countdown verifier: target must be a finite number")
        return {"type": kind, "nums": list(nums), "target": target}
    parts = spec.get("of")
    if not isinstance(parts, list) or not 0 < len(parts) <= MAX_PARTS:
        raise ValueError(f'an "all" verifier needs "of": a list of 1 to {MAX_PARTS} verifier specs')
    if depth >= MAX_NESTING:
        raise ValueError(f'"all" verifiers nest at most {MAX_NESTING} deep')
    return {"type": kind, "of": [_normalize(part, allowed_modules, depth + 1) for part in parts]}


def _names(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= MAX_NAME_CHARS for v in value):
        raise ValueError(f"{what} must be a list of argument names")
    return list(dict.fromkeys(value))


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS:
        raise ValueError(f"{what} must be a non-empty name of at most {MAX_NAME_CHARS} characters")
    return value


# Complexity: one branch per kind and field.
def _normalize_policy_kind(  # noqa: C901
    kind: str, spec: dict[str, Any], allowed_modules: tuple[str, ...], depth: int
) -> dict[str, Any]:
    if kind == "grounded":
        out: dict[str, Any] = {"type": kind}
        for key in ("arguments", "ignore"):
            if spec.get(key) is not None:
                out[key] = _names(spec[key], f"grounded verifier: {key}")
        return out
    if kind == "rules":
        rules = spec.get("rules")
        if not isinstance(rules, list) or not 0 < len(rules) <= MAX_RULES:
            raise ValueError(f'a rules verifier needs "rules": a list of 1 to {MAX_RULES} rules')
        for rule in rules:
            parse_rule(rule)
        return {"type": kind, "rules": [r.strip() for r in rules]}
    if kind == "plugin":
        out = {"type": kind, "name": _name(spec.get("name"), "plugin verifier: name")}
        params = spec.get("params", {})
        if not isinstance(params, dict) or len(json.dumps(params, default=str)) > 16384:
            raise ValueError("plugin verifier: params must be a JSON object of at most 16 KB")
        timeout = spec.get("timeout_s", PLUGIN_TIMEOUT_S)
        if not _is_number(timeout) or not 0 < timeout <= MAX_TIMEOUT_S:
            raise ValueError(f"plugin verifier: timeout_s must be a number in (0, {MAX_TIMEOUT_S:g}]")
        return {**out, "params": params, "timeout_s": float(timeout)}
    if kind == "webhook":
        rerunnable = spec.get("rerunnable", False)
        if not isinstance(rerunnable, bool):
            raise ValueError("webhook verifier: rerunnable must be true or false")
        return {"type": kind, "name": _name(spec.get("name"), "webhook verifier: name"), "rerunnable": rerunnable}
    if depth >= MAX_NESTING:
        raise ValueError(f"verifiers nest at most {MAX_NESTING} deep")
    tool = _name(spec.get("tool"), "for_tool verifier: tool")
    if "check" not in spec:
        raise ValueError('a for_tool verifier needs "check": the verifier spec for that tool\'s calls')
    return {"type": kind, "tool": tool, "check": _normalize(spec["check"], allowed_modules, depth + 1)}


@dataclass(frozen=True)
class VerifierContext:
    """What the operator's policy lends a verifier run: its webhooks by name, and the plugin names it
    enables (None: any installed plugin, as in the learner re-running a stored spec)."""

    webhooks: dict[str, Webhook] = field(default_factory=dict)
    plugins: frozenset[str] | None = None


DEFAULT_CONTEXT = VerifierContext()


@dataclass(frozen=True)
class VerifierSpec:
    """A validated verifier spec: parsed once where it enters (a request, a stored row), passed down.

    `kind` is one of VERIFIER_TYPES; `parts` are the children of an `all` spec; `params` the kind's
    own fields (execution: functions, timeout_s; countdown: nums, target). `to_json()` is the
    canonical JSON stored with each episode, and `VerifierSpec.parse(spec.to_json()) == spec`.
    """

    kind: str
    parts: tuple[VerifierSpec, ...] = ()
    params: dict[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def parse(
        cls, spec: VerifierSpec | str | dict[str, Any], *, allowed_modules: tuple[str, ...] = DEFAULT_EXECUTION_MODULES
    ) -> VerifierSpec:
        """Validate a spec (a name, JSON text or an object); ValueError says what to change."""
        if isinstance(spec, VerifierSpec):
            return spec
        return cls._from_json(_normalize(spec, allowed_modules, 0))

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> VerifierSpec:
        if data["type"] == "all":
            return cls(kind="all", parts=tuple(cls._from_json(part) for part in data["of"]))
        if data["type"] == "for_tool":
            return cls(kind="for_tool", parts=(cls._from_json(data["check"]),), params={"tool": data["tool"]})
        return cls(kind=data["type"], params={k: v for k, v in data.items() if k != "type"})

    def to_json(self) -> dict[str, Any]:
        if self.kind == "all":
            return {"type": "all", "of": [part.to_json() for part in self.parts]}
        if self.kind == "for_tool":
            return {"type": "for_tool", "tool": self.params["tool"], "check": self.parts[0].to_json()}
        return {"type": self.kind, **self.params}

    def leaves(self) -> list[VerifierSpec]:
        """The specs that judge something (an `all` or `for_tool` spec's leaves, in order; else the spec itself)."""
        if self.kind in ("all", "for_tool"):
            return [leaf for part in self.parts for leaf in part.leaves()]
        return [self]

    def cost(self) -> int:
        """Leaves run per verified answer: what a client's spec is charged (``RRR_MAX_VERIFIER_COST``)."""
        return len(self.leaves())

    def key(self) -> str:
        """The canonical JSON text of this spec (equal specs, equal keys)."""
        return json.dumps(self.to_json(), sort_keys=True)

    @property
    def math(self) -> bool:
        """Countdown problems only: the reflection uses the paper's math prompt (serving and training alike)."""
        kinds = {leaf.kind for leaf in self.leaves()}
        return "countdown" in kinds and kinds <= {"countdown", "schema"}  # the policy's schema rides along

    @property
    def needs_reference(self) -> bool:
        """Some part compares with expected calls (`reference`): a request must bring them."""
        return any(leaf.kind == "reference" for leaf in self.leaves())

    def rerunnable(self, expected: list[Any] | None) -> bool:
        """Whether the learner can re-run this verifier offline (reference needs expected calls). A
        webhook is not: the learner does not call the operator's webhooks in this version, whatever
        the policy's ``rerunnable`` says (kept on the spec for when it does)."""
        if any(leaf.kind == "webhook" for leaf in self.leaves()):
            return False
        return expected is not None or not self.needs_reference


SCHEMA = VerifierSpec(kind="schema")
"""The default verifier: calls name offered tools, arguments fit their schemas, tool_choice holds."""


def normalize_spec(
    spec: VerifierSpec | str | dict[str, Any], *, allowed_modules: tuple[str, ...] = DEFAULT_EXECUTION_MODULES
) -> dict[str, Any]:
    """Validate a spec and return its canonical JSON form (defaults filled in); ValueError if bad."""
    return VerifierSpec.parse(spec, allowed_modules=allowed_modules).to_json()


@dataclass
class _Run:
    """What every leaf of one verifier run shares."""

    output: ModelOutput
    tools: list[ToolSpec]
    tool_choice: str | dict[str, Any]
    expected: list[Any] | None
    allowed_modules: tuple[str, ...]
    budget: VerificationBudget
    messages: list[dict[str, Any]] | None = None
    context: VerifierContext = DEFAULT_CONTEXT
    executed: dict[str, Verdict] = field(default_factory=dict)

    def execute(self, spec: VerifierSpec) -> Verdict:
        return verify_execution(
            self.output,
            spec.params["functions"],
            spec.params["timeout_s"],
            allowed_modules=self.allowed_modules,
            budget=self.budget,
        )

    def prefetch_executions(self, spec: VerifierSpec) -> None:
        """Run the distinct execution leaves concurrently (a bounded pool), each once."""
        distinct = {leaf.key(): leaf for leaf in spec.leaves() if leaf.kind == "execution"}
        if len(distinct) < 2 or self.output.parse_error or not self.output.tool_calls:
            return
        with ThreadPoolExecutor(min(len(distinct), MAX_CONCURRENT_PROCESSES), thread_name_prefix="rrr-leaf") as pool:
            verdicts = pool.map(self.execute, distinct.values())
            self.executed.update(zip(distinct, verdicts, strict=True))


def _run(spec: VerifierSpec, run: _Run) -> Verdict:
    if run.budget.expired:
        return failed(run.budget.reason(), code="timeout")
    kind, params = spec.kind, spec.params
    if kind == "schema":
        return verify_schema(run.output, run.tools, run.tool_choice)
    if kind == "reference":
        if run.expected is None:
            return failed("no expected calls", code="verifier_error")
        return verify_reference(run.output, run.expected, run.tools)
    if kind == "relevance":
        return verify_relevance(run.output)
    if kind == "execution":
        cached = run.executed.get(spec.key())
        return cached if cached is not None else run.execute(spec)
    if kind == "countdown":
        return verify_countdown(run.output.content, params["nums"], params["target"])
    if kind in ("grounded", "rules", "plugin", "webhook", "for_tool"):
        return _run_policy_kind(spec, run)
    results = []
    for index, part in enumerate(spec.parts):
        verdict = _run(part, run)
        if not verdict.ok:
            details = {**verdict.details, "failed": part.kind, "failed_index": index}
            return Verdict(False, verdict.reason, details, code=verdict.code, path=verdict.path)
        results.append({"type": part.kind, "details": verdict.details})
    return passed(results=results)


def _run_policy_kind(spec: VerifierSpec, run: _Run) -> Verdict:
    kind, params = spec.kind, spec.params
    if kind == "grounded":
        return verify_grounded(
            run.output, run.tools, run.messages, arguments=params.get("arguments"), ignore=params.get("ignore")
        )
    if kind == "rules":
        return verify_rules(run.output, params["rules"])
    if kind == "plugin":
        name = params["name"]
        if run.context.plugins is not None and name not in run.context.plugins:
            return failed(f"verifier plugin {name!r} is not enabled by the operator's policy", code="verifier_error")
        return verify_plugin(
            name,
            run.output,
            run.tools,
            run.messages,
            run.expected,
            params.get("params"),
            timeout_s=params.get("timeout_s", PLUGIN_TIMEOUT_S),
            budget=run.budget,
        )
    if kind == "webhook":
        hook = run.context.webhooks.get(params["name"])
        if hook is None:
            return failed(f"no webhook {params['name']!r} is configured here", code="verifier_error")
        return verify_webhook(hook, run.output, run.tools, run.messages, run.expected, budget=run.budget)
    tool = params["tool"]  # for_tool: the check sees only that tool's calls
    calls = [call for call in run.output.tool_calls if call.name == tool]
    if not calls or run.output.parse_error:
        return passed(tool=tool, calls=0)
    sub = _Run(
        ModelOutput(tool_calls=calls, content=run.output.content),
        run.tools,
        run.tool_choice,
        run.expected,
        run.allowed_modules,
        run.budget,
        run.messages,
        run.context,
    )
    return _run(spec.parts[0], sub)


def run_verifier(
    spec: VerifierSpec | str | dict[str, Any],
    output: ModelOutput,
    *,
    tools: list[ToolSpec],
    tool_choice: str | dict[str, Any] = "auto",
    expected: list[Any] | None = None,
    allowed_modules: tuple[str, ...] = DEFAULT_EXECUTION_MODULES,
    budget: VerificationBudget = UNBOUNDED,
    messages: list[dict[str, Any]] | None = None,
    context: VerifierContext = DEFAULT_CONTEXT,
) -> Verdict:
    """Run the verifier a spec describes (parsed first unless it is a `VerifierSpec` already), within
    ``budget`` (the request's; unbounded by default). ``messages`` is the conversation (what
    ``grounded`` traces values to, what plugins and webhooks see); ``context`` the operator's
    webhooks and enabled plugins. ValueError only for a bad spec, tool list or reference."""
    parsed = VerifierSpec.parse(spec, allowed_modules=allowed_modules)
    run = _Run(output, tools, tool_choice, expected, allowed_modules, budget, messages, context)
    with regex_budget(budget if budget is not UNBOUNDED else None):
        run.prefetch_executions(parsed)
        return _run(parsed, run)


def is_rerunnable(
    spec: VerifierSpec | str | dict[str, Any],
    expected: list[Any] | None,
    *,
    allowed_modules: tuple[str, ...] = DEFAULT_EXECUTION_MODULES,
) -> bool:
    """Whether the learner can re-run this verifier offline (reference needs expected calls)."""
    try:
        return VerifierSpec.parse(spec, allowed_modules=allowed_modules).rerunnable(expected)
    except ValueError:
        return False
