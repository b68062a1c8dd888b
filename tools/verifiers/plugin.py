"""The `plugin` verifier: Python verifiers installed as packages, enabled by name in the operator's policy.

A plugin is a callable published under the entry-point group ``rrr.verifiers`` (in its package's
``pyproject.toml``: ``[project.entry-points."rrr.verifiers"] "acme.refunds" = "acme_refunds:verify"``).
Its one signature::

    verify(output: ModelOutput, tools: list[ToolSpec], messages: list[dict], expected: list | None,
           params: dict) -> Verdict            # or {"ok": bool, "reason": str, "code": str}

Only names the operator's policy enables are run (a client's ``rrr.verifier`` cannot name one:
``api.validate`` refuses it), and only through entry points: nothing imports a module a spec
names. A plugin runs in a thread of its own with a timeout (``timeout_s``, within the request's
budget); one that raises, hangs past its timeout or returns something else gives a
``verifier_error`` verdict, never an exception. At most ``MAX_RUNNING`` plugin calls run at once
per process: a hung plugin keeps its slot until it returns, and once all are held new calls fail
with ``verifier_error`` at once. A failed verdict without a known code is a ``rule_violation``. The
learner re-runs plugins in its own process the same way (the package must be installed there).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from importlib import metadata
from typing import Any

from tools.spec import ToolSpec
from tools.verifiers.base import FAILURE_CODES, UNBOUNDED, ModelOutput, Verdict, VerificationBudget, failed

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "rrr.verifiers"
DEFAULT_TIMEOUT_S = 5.0
MAX_RUNNING = 8
_SLOTS = threading.BoundedSemaphore(MAX_RUNNING)


def installed_plugins() -> dict[str, str]:
    """``{name: "module:attr"}`` of every verifier plugin installed in this environment."""
    return {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


@functools.lru_cache(maxsize=64)
def load_plugin(name: str) -> Callable[..., Any]:
    """The plugin's callable; ValueError if no such plugin is installed or it is not callable."""
    found = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        names = ", ".join(sorted(installed_plugins())) or "none"
        raise ValueError(f"no verifier plugin {name!r} is installed (entry points {ENTRY_POINT_GROUP}: {names})")
    try:
        target = found[0].load()
    except Exception as exc:  # a broken package: the operator's to fix, named at startup
        raise ValueError(f"verifier plugin {name!r} ({found[0].value}) cannot be loaded: {exc}") from None
    if not callable(target):
        raise ValueError(f"verifier plugin {name!r} ({found[0].value}) is not callable")
    return target  # type: ignore[no-any-return]


def _as_verdict(name: str, value: Any) -> Verdict:
    if isinstance(value, dict) and isinstance(value.get("ok"), bool):
        value = Verdict(
            ok=value["ok"],
            reason=str(value.get("reason") or ""),
            details=dict(value["details"]) if isinstance(value.get("details"), dict) else {},
            code=value.get("code") if isinstance(value.get("code"), str) else None,
            path=value.get("path") if isinstance(value.get("path"), str) else None,
        )
    if not isinstance(value, Verdict):
        return failed(f"verifier plugin {name!r} returned {type(value).__name__}, not a Verdict", code="verifier_error")
    if value.ok:
        return value
    code = value.code if value.code in FAILURE_CODES else "rule_violation"
    return failed(value.reason or f"rejected by verifier plugin {name!r}", code=code, path=value.path, **value.details)


def verify_plugin(
    name: str,
    output: ModelOutput,
    tools: list[ToolSpec],
    messages: list[dict[str, Any]] | None,
    expected: list[Any] | None,
    params: dict[str, Any] | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    budget: VerificationBudget = UNBOUNDED,
) -> Verdict:
    """Run plugin ``name`` on ``output`` within ``timeout_s`` (and the budget); never raises."""
    try:
        plugin = load_plugin(name)
    except ValueError as exc:
        return failed(str(exc), code="verifier_error")
    if not _SLOTS.acquire(blocking=False):
        return failed(f"verifier plugin {name!r} not run: every plugin slot is busy", code="verifier_error")
    box: dict[str, Any] = {}
    done = threading.Event()

    def call() -> None:
        try:
            box["value"] = plugin(output, list(tools), list(messages or []), expected, dict(params or {}))
        except BaseException as exc:  # the plugin's failure is data
            box["error"] = exc
        finally:
            done.set()
            _SLOTS.release()

    threading.Thread(target=call, name=f"rrr-plugin-{name}", daemon=True).start()
    if not done.wait(max(0.0, min(timeout_s, budget.remaining()))):
        log.warning("verifier plugin %s did not answer within %gs", name, timeout_s)
        return failed(f"verifier plugin {name!r} did not answer within {timeout_s:g}s", code="verifier_error")
    if "error" in box:
        error = box["error"]
        return failed(f"verifier plugin {name!r} raised {type(error).__name__}: {error}"[:500], code="verifier_error")
    return _as_verdict(name, box.get("value"))
