"""The `webhook` verifier: operator-named HTTP endpoints that judge a call.

Webhooks are declared in the operator's policy only (name, URL, timeout, optional bearer key, and
whether their verdicts may be re-run for training); a client can name a webhook the policy
enables, never supply a URL. rrr POSTs JSON ``{"webhook", "tool_calls", "content", "messages",
"tools", "expected"}`` and expects ``200`` with ``{"ok": bool, "reason": str, "code": str}``
(``code`` one of the failure codes; a missing or unknown one makes a failure a ``rule_violation``).
A timeout, a refused connection, another status, a body over ``MAX_REPLY_BYTES`` or a reply not of
that shape is a ``verifier_error`` verdict, never an exception. A circuit breaker per webhook:
after ``failures_to_open`` such errors in a row it is not called for ``open_s`` seconds (each call
meanwhile is a ``verifier_error`` at once), then tried again.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tools.spec import ToolSpec
from tools.verifiers.base import FAILURE_CODES, UNBOUNDED, ModelOutput, Verdict, VerificationBudget, failed, passed

MAX_REPLY_BYTES = 64 * 1024
MAX_REASON_CHARS = 1000


@dataclass
class Webhook:
    """One operator-declared endpoint (from the policy file)."""

    name: str
    url: str
    timeout_s: float = 5.0
    api_key: str | None = field(default=None, repr=False)
    rerunnable: bool = False
    """Whether the learner may call it again to judge retries (a side-effect-free check)."""
    failures_to_open: int = 5
    open_s: float = 30.0
    _failures: int = field(default=0, repr=False)
    _open_until: float = field(default=0.0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"webhook {self.name!r}: url must be http:// or https://")
        if not 0 < self.timeout_s <= 60:
            raise ValueError(f"webhook {self.name!r}: timeout_s must be in (0, 60]")

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/verifiers`` shows (never the key)."""
        return {"url": self.url, "timeout_s": self.timeout_s, "rerunnable": self.rerunnable, "auth": bool(self.api_key)}

    def _open(self) -> bool:
        with self._lock:
            return time.monotonic() < self._open_until

    def _record(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self._failures = 0
                return
            self._failures += 1
            if self._failures >= self.failures_to_open:
                self._open_until = time.monotonic() + self.open_s
                self._failures = 0


def _reply_verdict(hook: Webhook, response: httpx.Response, body: bytes) -> Verdict | None:
    """The webhook's verdict, or None when the reply is not one."""
    if response.status_code != 200 or len(body) > MAX_REPLY_BYTES:
        return None
    try:
        reply = json.loads(body)
    except ValueError:
        return None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        return None
    if reply["ok"]:
        return passed(webhook=hook.name)
    reason = str(reply["reason"]) if isinstance(reply.get("reason"), str) else ""
    code = str(reply["code"]) if reply.get("code") in FAILURE_CODES else "rule_violation"
    path = str(reply["path"]) if isinstance(reply.get("path"), str) else None
    return failed(reason[:MAX_REASON_CHARS] or f"rejected by webhook {hook.name!r}", code=code, path=path)


def verify_webhook(
    hook: Webhook,
    output: ModelOutput,
    tools: list[ToolSpec],
    messages: list[dict[str, Any]] | None,
    expected: list[Any] | None,
    *,
    budget: VerificationBudget = UNBOUNDED,
) -> Verdict:
    """POST the call to ``hook`` and turn its reply into a verdict (module docstring); never raises."""
    if hook._open():
        return failed(f"webhook {hook.name!r} is failing; not called for now", code="verifier_error")
    payload = {
        "webhook": hook.name,
        "tool_calls": [call.to_dict() for call in output.tool_calls],
        "content": output.content,
        "messages": messages or [],
        "tools": [tool.to_openai() for tool in tools],
        "expected": expected,
    }
    headers = {"Authorization": f"Bearer {hook.api_key}"} if hook.api_key else {}
    timeout = max(0.05, min(hook.timeout_s, budget.remaining()))
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client,
            client.stream("POST", hook.url, json=payload, headers=headers) as response,
        ):
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_REPLY_BYTES:
                    break
    except httpx.TimeoutException:
        hook._record(False)
        return failed(f"webhook {hook.name!r} did not answer within {timeout:g}s", code="verifier_error")
    except httpx.HTTPError as exc:
        hook._record(False)
        return failed(f"webhook {hook.name!r} could not be reached ({type(exc).__name__})", code="verifier_error")
    verdict = _reply_verdict(hook, response, body)
    hook._record(verdict is not None)
    if verdict is None:
        return failed(f"webhook {hook.name!r} gave no verdict (HTTP {response.status_code})", code="verifier_error")
    return verdict
