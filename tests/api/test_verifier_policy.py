"""The operator's verifier policy through the real server and the plain openai SDK (no `rrr`
extension): a per-tool policy mixing schema, grounded, rules, a plugin installed for real from
examples/ (pip install into a folder on sys.path, found through its entry point) and a webhook
served by a local test server judges every request; the spec is stored and re-runs offline."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.api.conftest import ADMIN, Rrr, running
from tests.support.upstream import Script, text, tool_call
from tools.spec import ToolCall, ToolSpec
from tools.verifiers import plugin as plugin_module
from tools.verify import ModelOutput, run_verifier

ROOT = Path(__file__).resolve().parents[2]


def tool(name: str, **properties: Any) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {"type": "function", "function": {"name": name, "parameters": schema}}


TOOLS = [
    tool("get_weather", city={"type": "string"}),
    tool("issue_refund", order_id={"type": "string"}, amount={"type": "number"}),
    tool("book_hotel", city={"type": "string"}, check_in={"type": "string"}, check_out={"type": "string"}),
]


@pytest.fixture(scope="module")
def example_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """examples/rrr-verifier-example pip-installed (no network: no deps, no build isolation) into a
    folder put on sys.path, so its entry point is found as any installed package's would be."""
    source = tmp_path_factory.mktemp("src") / "plugin"
    shutil.copytree(ROOT / "examples" / "rrr-verifier-example", source)
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
    )
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    plugin_module.load_plugin.cache_clear()
    try:
        assert "example.refund_limit" in plugin_module.installed_plugins()
        yield "example.refund_limit"
    finally:
        sys.path.remove(str(target))
        importlib.invalidate_caches()
        plugin_module.load_plugin.cache_clear()


class Booking:
    """The operator's booking webhook: refuses one sold-out city, counts its calls."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.calls.append(body)
                sold_out = any(c["arguments"].get("city") == "Lisbon" for c in body["tool_calls"])
                reply = {"ok": not sold_out, "reason": "Lisbon is sold out that week", "code": "rule_violation"}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/booking"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, example_plugin: str) -> Iterator[tuple[Rrr, Booking]]:
    booking = Booking()
    policy = {
        "default": "schema",
        "tools": {
            "get_weather": ["schema", "grounded"],
            "issue_refund": ["schema", {"type": "plugin", "name": example_plugin, "params": {"max_amount": 500}}],
            "book_hotel": ["schema", {"rules": ["check_in < check_out"]}, {"webhook": "booking"}],
        },
        "webhooks": {"booking": {"url": booking.url, "timeout_s": 3}},
    }
    with running(tmp_path_factory.mktemp("policy"), verifiers=policy) as rrr:
        yield rrr, booking
    booking.server.shutdown()


def ask(rrr: Rrr, messages: list[dict[str, Any]], script: Script) -> Any:
    rrr.reset(script)
    sdk = rrr.client()
    return sdk.chat.completions.create(model="rrr", messages=messages, tools=TOOLS)  # type: ignore[arg-type]


def test_a_plain_sdk_request_is_judged_by_the_servers_per_tool_policy(served: tuple[Rrr, Booking]) -> None:
    rrr, booking = served
    weather = [{"role": "user", "content": "What's the weather in Paris?"}]
    # grounded: the invented city fails, the reflection and retry fix it
    done = ask(
        rrr,
        weather,
        Script(
            answer=[tool_call("get_weather", {"city": "Atlantis"})],
            reflection=[text("Use the city the user named.")],
            retry=[tool_call("get_weather", {"city": "Paris"})],
        ),
    )
    info = done.model_extra["rrr"]
    assert (info["status"], info["verified"]) == ("retry_ok", True)
    episode = rrr.episode(info["episode_id"])
    assert episode["failure_code"] == "ungrounded_value"
    assert episode["attempts"][0]["verdict"]["path"] == "arguments.city"
    stored = episode["verifier"]
    assert [p.get("tool") for p in stored["of"]] == [None, "get_weather", "issue_refund", "book_hotel"]
    # the offered book_hotel brings the webhook into the spec, and the policy did not declare it re-runnable:
    # the learner could not judge a retry the way this request was judged, so nothing here is trainable
    assert episode["trainable"] is False

    # the plugin: a refund above the order total a tool reported breaks the operator's rule
    refund = [
        {"role": "user", "content": "Refund order A7 in full."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "lookup_order", "arguments": '{"order_id": "A7"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"order_id": "A7", "total": 80}'},
    ]
    too_much = tool_call("issue_refund", {"order_id": "A7", "amount": 900})
    failed = ask(rrr, refund, Script(answer=[too_much], retry=[too_much])).model_extra["rrr"]
    assert (failed["status"], failed["failure_code"]) == ("failed", "rule_violation")
    assert "need a human" in failed["reason"]
    ok = ask(rrr, refund, Script(answer=[tool_call("issue_refund", {"order_id": "A7", "amount": 80})]))
    assert ok.model_extra["rrr"]["status"] == "first_ok"

    # rules, then the webhook: bad dates never reach the webhook; Lisbon is refused by it
    hotel = [{"role": "user", "content": "Book Lisbon or Porto from 2027-03-01 to 2027-03-04."}]
    dates = {"check_in": "2027-03-04", "check_out": "2027-03-01"}
    calls_before = len(booking.calls)
    swapped = ask(
        rrr,
        hotel,
        Script(
            answer=[tool_call("book_hotel", {"city": "Porto", **dates})],
            retry=[tool_call("book_hotel", {"city": "Lisbon", "check_in": "2027-03-01", "check_out": "2027-03-04"})],
        ),
    )
    info = swapped.model_extra["rrr"]
    assert (info["status"], info["failure_code"], info["reason"]) == (
        "failed",
        "rule_violation",
        "Lisbon is sold out that week",
    )
    assert len(booking.calls) == calls_before + 1  # the answer broke the rule; only the retry was sent
    rrr.flush()
    hotel_episode = rrr.episode(info["episode_id"])
    assert hotel_episode["trainable"] is False  # the webhook was not declared re-runnable

    # What judged each episode is stored: re-running it offline (as the learner does) agrees.
    weather_call = ModelOutput(tool_calls=[ToolCall("get_weather", {"city": "Atlantis"})])
    specs = [ToolSpec.from_openai(t) for t in TOOLS]
    offline = run_verifier(stored, weather_call, tools=specs, messages=weather, context=rrr.state.policy.context)
    assert (offline.ok, offline.code) == (False, "ungrounded_value")


def test_the_policy_is_listed_and_a_client_cannot_name_what_it_does_not_enable(served: tuple[Rrr, Booking]) -> None:
    rrr, _ = served
    listed = rrr.http(ADMIN).get("/v1/verifiers").json()
    assert listed["default"] == {"type": "schema"} and listed["client"] == "add"
    assert set(listed["tools"]) == {"get_weather", "issue_refund", "book_hotel"}
    assert listed["webhooks"]["booking"]["auth"] is False and listed["plugins"] == ["example.refund_limit"]
    assert "example.refund_limit" in listed["installed_plugins"]
    assert rrr.http("sk-not-admin").get("/v1/verifiers").status_code == 401
    sdk = rrr.client()
    for spec in ({"type": "plugin", "name": "acme.other"}, {"type": "webhook", "name": "elsewhere"}):
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.chat.completions.create(
                model="rrr",
                messages=[{"role": "user", "content": "hi"}],
                tools=TOOLS,  # type: ignore[arg-type]
                extra_body={"rrr": {"verifier": spec}},
            )
        assert caught.value.body["param"] == "rrr.verifier"  # type: ignore[index]


def test_a_bad_policy_file_fails_at_startup_naming_the_file_and_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.settings import Settings

    config = tmp_path / "rrr.yaml"
    config.write_text("verifiers:\n  tools:\n    refund: [schema, {plugin: acme.nope}]\n")
    monkeypatch.setenv("RRR_CONFIG", str(config))
    with pytest.raises(ValueError) as caught:
        Settings()
    message = str(caught.value)
    assert f"{config}: verifiers.tools.refund" in message and "acme.nope" in message
