"""The operator's verifiers: grounded, rules, plugin, webhook, for_tool and the policy that combines
them; known-good and known-bad examples, hostile inputs included (huge payloads, slow and broken
webhooks, a plugin that raises or hangs, rules that try to escape)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tools.spec import ToolCall, ToolSpec
from tools.verifiers import plugin as plugin_module
from tools.verifiers.base import Verdict
from tools.verifiers.grounded import verify_grounded
from tools.verifiers.policy import PolicyError, VerifierPolicy
from tools.verifiers.rules import parse_rule, verify_rules
from tools.verifiers.webhook import Webhook, verify_webhook
from tools.verify import ModelOutput, VerificationBudget, VerifierSpec, run_verifier

BOOK = ToolSpec(
    "book_hotel",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "check_in": {"type": "string", "format": "date"},
            "check_out": {"type": "string", "format": "date"},
            "guests": {"type": "integer", "default": 1},
            "room": {"type": "string", "enum": ["single", "double"]},
            "budget": {"type": "number"},
            "notes": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["city"],
    },
)
USER = [
    {"role": "system", "content": "You book hotels."},
    {"role": "user", "content": "Book a double room in São Paulo, 2 guests, up to 1,250.50 a night. Quiet, please!"},
    {"role": "tool", "content": '{"order_id": "A7", "total": 80}'},
]


def out(*calls: ToolCall, parse_error: str | None = None) -> ModelOutput:
    return ModelOutput(tool_calls=list(calls), parse_error=parse_error)


def book(**arguments: Any) -> ToolCall:
    return ToolCall("book_hotel", arguments)


# ---------------------------------------------------------------------------------------- grounded


def test_grounded_accepts_values_from_the_conversation_after_light_normalisation() -> None:
    good = book(city="sao paulo", guests=2, room="double", budget=1250.5, notes=["quiet"], check_in="2027-01-02")
    assert verify_grounded(out(good), [BOOK], USER).ok
    assert verify_grounded(out(book(city="São Paulo", guests=1)), [BOOK], USER).ok  # 1 is the schema's default


def test_grounded_catches_invented_values_at_their_path() -> None:
    verdict = verify_grounded(out(book(city="Rio de Janeiro", budget=900, notes=["sea view"])), [BOOK], USER)
    assert not verdict.ok and verdict.code == "ungrounded_value" and verdict.path == "arguments.city"
    assert len(verdict.details["errors"]) == 3 and "arguments.notes[0]" in verdict.details["errors"][2]
    # the model's own words are not a source: only system, user and tool messages are
    assistant = [*USER, {"role": "assistant", "content": "I will book Rio de Janeiro."}]
    assert verify_grounded(out(book(city="Rio de Janeiro")), [BOOK], assistant).code == "ungrounded_value"
    # 12 must be the number 12, not a digit of 1,250.50
    assert verify_grounded(out(book(city="Sao Paulo", guests=12)), [BOOK], USER).code == "ungrounded_value"


def test_grounded_checks_only_the_configured_arguments() -> None:
    invented = out(book(city="Rio de Janeiro", budget=900))
    assert verify_grounded(invented, [BOOK], USER, arguments=["budget"]).path == "arguments.budget"
    assert verify_grounded(invented, [BOOK], USER, ignore=["city", "budget"]).ok
    assert verify_grounded(out(parse_error="bad json"), [BOOK], USER).code == "parse_error"


def test_grounded_is_bounded_on_a_huge_call() -> None:
    huge = out(book(city="Sao Paulo", notes=[f"note {i}" for i in range(10_000)]))
    started = time.monotonic()
    verdict = verify_grounded(huge, [BOOK], USER)
    assert time.monotonic() - started < 5 and not verdict.ok and verdict.code == "ungrounded_value"


# ---------------------------------------------------------------------------------------- rules


def test_rules_hold_break_and_skip_absent_arguments() -> None:
    rules = ["check_in < check_out", "budget <= 2000", "room in ['single', 'double']", "not (guests > 4)"]
    good = book(check_in="2027-01-02", check_out="2027-01-05", budget=900, room="double", guests=2)
    assert verify_rules(out(good), rules).ok
    assert verify_rules(out(book(city="X")), rules).ok  # nothing to compare: the schema judges absence
    bad = verify_rules(out(book(check_in="2027-01-05", check_out="2027-01-02", budget=5000)), rules)
    assert not bad.ok and bad.code == "rule_violation" and bad.path == "arguments.check_in"
    assert len(bad.details["errors"]) == 2 and "budget = 5000" in bad.details["errors"][1]
    mixed = verify_rules(out(book(check_in="2027-01-05", check_out=3)), rules)
    assert mixed.code == "rule_violation" and "cannot be compared" in mixed.reason
    assert verify_rules(out(ToolCall("other", {"budget": 9999})), rules, tool="book_hotel").ok


@pytest.mark.parametrize(
    "rule",
    [
        "__import__('os').system('true')",
        "amount.__class__",
        "[x for x in range(10)]",
        "amount if True else 1",
        "amount * 2 < 3",
        "lambda: 1",
        "amount",
        "a" * 600,
        "(" * 200 + "1" + ")" * 200,
        "",
        42,
    ],
)
def test_rules_refuse_anything_but_comparisons_of_arguments_and_literals(rule: Any) -> None:
    with pytest.raises(ValueError):
        parse_rule(rule)
    with pytest.raises(ValueError):
        VerifierSpec.parse({"type": "rules", "rules": [rule]})


# ---------------------------------------------------------------------------------------- plugins


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Plugins registered by name, as load_plugin would find them through entry points."""
    registry: dict[str, Any] = {}

    def load(name: str) -> Any:
        if name not in registry:
            raise ValueError(f"no verifier plugin {name!r} is installed")
        return registry[name]

    monkeypatch.setattr(plugin_module, "load_plugin", load)
    yield registry


def test_a_plugin_judges_and_its_failures_are_verdicts(plugins: dict[str, Any]) -> None:
    release = threading.Event()
    plugins["ok"] = lambda output, tools, messages, expected, params: Verdict(True)
    plugins["no"] = lambda o, t, m, e, p: {"ok": False, "reason": f"over {p['max']}", "path": "arguments.budget"}
    plugins["boom"] = lambda o, t, m, e, p: 1 / 0
    plugins["hang"] = lambda o, t, m, e, p: release.wait(30)
    plugins["odd"] = lambda o, t, m, e, p: "yes"
    call = out(book(city="X", budget=9))

    def run(name: str, **spec: Any) -> Verdict:
        return run_verifier({"type": "plugin", "name": name, **spec}, call, tools=[BOOK], messages=USER)

    assert run("ok").ok
    no = run("no", params={"max": 5})
    assert (no.ok, no.code, no.reason, no.path) == (False, "rule_violation", "over 5", "arguments.budget")
    assert run("boom").code == "verifier_error" and "ZeroDivisionError" in run("boom").reason
    assert run("odd").code == "verifier_error"
    assert run("missing").code == "verifier_error" and "no verifier plugin" in run("missing").reason
    started = time.monotonic()
    hung = run("hang", timeout_s=0.3)
    assert hung.code == "verifier_error" and "did not answer" in hung.reason and time.monotonic() - started < 2
    release.set()


def test_a_plugin_the_policy_does_not_enable_is_not_run(plugins: dict[str, Any]) -> None:
    plugins["ok"] = lambda o, t, m, e, p: Verdict(True)
    policy = VerifierPolicy.parse({"tools": {"book_hotel": [{"plugin": "ok"}]}})
    assert policy.context.plugins == frozenset({"ok"})
    with pytest.raises(ValueError, match="not enabled"):
        policy.check_client(VerifierSpec.parse({"type": "plugin", "name": "other"}))
    verdict = run_verifier(
        {"type": "plugin", "name": "other"}, out(book(city="X")), tools=[BOOK], context=policy.context
    )
    assert verdict.code == "verifier_error" and "not enabled" in verdict.reason


# ---------------------------------------------------------------------------------------- webhooks


class Hook:
    """A local webhook server whose reply the test sets; it counts the calls it got."""

    def __init__(self) -> None:
        self.reply: Any = {"ok": True}
        self.status = 200
        self.delay_s = 0.0
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                hook.auth.append(self.headers.get("Authorization"))
                time.sleep(hook.delay_s)
                data = hook.reply if isinstance(hook.reply, bytes) else json.dumps(hook.reply).encode()
                self.send_response(hook.status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/check"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.close()


def test_a_webhook_judges_the_call_with_the_operators_key(hook: Hook) -> None:
    webhook = Webhook("booking", hook.url, timeout_s=2, api_key="sekret")
    call = out(book(city="Sao Paulo"))
    assert verify_webhook(webhook, call, [BOOK], USER, None).ok
    assert hook.bodies[0]["tool_calls"] == [{"name": "book_hotel", "arguments": {"city": "Sao Paulo"}}]
    assert hook.bodies[0]["messages"] == USER and hook.auth == ["Bearer sekret"]
    hook.reply = {"ok": False, "reason": "no rooms left", "code": "wrong_value", "path": "arguments.city"}
    verdict = verify_webhook(webhook, call, [BOOK], USER, None)
    assert (verdict.code, verdict.reason, verdict.path) == ("wrong_value", "no rooms left", "arguments.city")
    hook.reply = {"ok": False, "reason": "closed", "code": "made_up"}
    assert verify_webhook(webhook, call, [BOOK], USER, None).code == "rule_violation"
    assert "sekret" not in repr(webhook) and webhook.describe()["auth"] is True


@pytest.mark.parametrize(
    ("status", "reply", "delay_s"),
    [
        (500, {"ok": True}, 0.0),
        (200, b"not json", 0.0),
        (200, {"verdict": "fine"}, 0.0),
        (200, b"x" * 100_000, 0.0),
        (200, {"ok": True}, 1.5),
    ],
    ids=["http-500", "not-json", "wrong-shape", "huge", "slow"],
)
def test_a_broken_webhook_is_a_verifier_error(hook: Hook, status: int, reply: Any, delay_s: float) -> None:
    hook.status, hook.reply, hook.delay_s = status, reply, delay_s
    started = time.monotonic()
    verdict = verify_webhook(Webhook("booking", hook.url, timeout_s=0.5), out(book(city="X")), [BOOK], USER, None)
    assert not verdict.ok and verdict.code == "verifier_error" and time.monotonic() - started < 1.4


def test_a_dead_webhook_is_not_called_once_its_breaker_opens(hook: Hook) -> None:
    webhook = Webhook("booking", hook.url, timeout_s=1, failures_to_open=3, open_s=60)
    hook.status = 503
    for _ in range(3):
        assert verify_webhook(webhook, out(book(city="X")), [BOOK], USER, None).code == "verifier_error"
    calls = len(hook.bodies)
    hook.status = 200
    verdict = verify_webhook(webhook, out(book(city="X")), [BOOK], USER, None)
    assert verdict.code == "verifier_error" and "not called" in verdict.reason and len(hook.bodies) == calls
    refused = Webhook("down", "http://127.0.0.1:9/nothing", timeout_s=0.5)
    assert verify_webhook(refused, out(book(city="X")), [BOOK], USER, None).code == "verifier_error"


def test_a_webhook_within_a_spent_budget_is_not_waited_for(hook: Hook) -> None:
    hook.delay_s = 2.0
    budget = VerificationBudget(total_s=0.3)
    policy = VerifierPolicy.parse({"webhooks": {"booking": {"url": hook.url, "timeout_s": 5}}})
    started = time.monotonic()
    verdict = run_verifier(
        {"type": "webhook", "name": "booking"}, out(book(city="X")), tools=[BOOK], budget=budget, context=policy.context
    )
    assert not verdict.ok and time.monotonic() - started < 1.5


# ---------------------------------------------------------------------------------------- the policy


def test_the_policy_judges_each_tool_by_its_own_checks(hook: Hook) -> None:
    policy = VerifierPolicy.parse(
        {
            "default": "schema",
            "tools": {
                "book_hotel": ["schema", {"rules": ["check_in < check_out"]}, {"webhook": "booking"}],
                "get_weather": [{"grounded": {"arguments": ["city"]}}],
            },
            "webhooks": {"booking": {"url": hook.url, "timeout_s": 2, "rerunnable": True}},
        }
    )
    weather = ToolSpec("get_weather", parameters={"type": "object", "properties": {"city": {"type": "string"}}})
    spec = policy.spec_for(["book_hotel", "get_weather", "search"])
    assert [p.kind for p in spec.parts] == ["schema", "for_tool", "for_tool"]
    assert not spec.rerunnable(None)  # the learner does not call webhooks (yet): not trainable
    assert policy.spec_for(["get_weather"]).rerunnable(None)
    assert VerifierSpec.parse(spec.to_json()) == spec  # stored on the episode, re-run by the learner

    def judge(*calls: ToolCall) -> Verdict:
        return run_verifier(spec, out(*calls), tools=[BOOK, weather], messages=USER, context=policy.context)

    assert judge(ToolCall("get_weather", {"city": "Sao Paulo"})).ok and hook.bodies == []  # only booking calls
    assert judge(ToolCall("get_weather", {"city": "Oslo"})).code == "ungrounded_value"
    bad_dates = book(city="X", check_in="2027-02-02", check_out="2027-02-01")
    assert judge(bad_dates).code == "rule_violation" and hook.bodies == []
    hook.reply = {"ok": False, "reason": "sold out", "code": "rule_violation"}
    assert judge(book(city="X")).reason == "sold out" and len(hook.bodies) == 1
    assert judge(book(city=7)).code == "type_mismatch"  # the default schema check first


def test_a_client_adds_checks_and_never_removes_one() -> None:
    policy = VerifierPolicy.parse({"tools": {"book_hotel": [{"rules": ["budget <= 100"]}]}})
    base = policy.spec_for(["book_hotel"])
    combined = policy.with_client(base, VerifierSpec.parse("reference"))
    assert {leaf.kind for leaf in combined.leaves()} == {"schema", "rules", "reference"}
    assert policy.with_client(base, VerifierSpec.parse("schema")) == base  # nothing added twice
    strict = VerifierPolicy.parse({"client": "none"})
    with pytest.raises(ValueError, match="does not accept"):
        strict.with_client(strict.spec_for([]), VerifierSpec.parse("reference"))


@pytest.mark.parametrize(
    ("policy", "where"),
    [
        ({"defualt": "schema"}, "verifiers.defualt"),
        ({"tools": {"refund": [{"plugin": "acme.nope"}]}}, "verifiers.tools.refund"),
        ({"tools": {"book": [{"webhook": "booking"}]}}, "verifiers.tools.book[0]"),
        ({"tools": {"book": ["schema", {"rules": ["amount.__class__"]}]}}, "verifiers.tools.book"),
        ({"tools": {"book": ["schemaa"]}}, "verifiers.tools.book"),
        ({"webhooks": {"w": {"url": "ftp://x"}}}, "verifiers.webhooks.w"),
        ({"webhooks": {"w": {"url": "http://x", "secret": 1}}}, "verifiers.webhooks.w"),
        (
            {"webhooks": {"w": {"url": "http://x", "api_key_env": "RRR_TEST_UNSET_KEY"}}},
            "verifiers.webhooks.w.api_key_env",
        ),
        ({"client": "sometimes"}, "verifiers.client"),
        ({"tools": {"book": []}}, "verifiers.tools.book"),
    ],
)
def test_a_bad_policy_names_the_key_that_is_wrong(policy: dict[str, Any], where: str) -> None:
    with pytest.raises(PolicyError) as caught:
        VerifierPolicy.parse(policy)
    assert str(caught.value).startswith(where), str(caught.value)
