"""Execution verifier: run each call's registered Python function in a subprocess with a timeout.

A call passes if its function returns; an exception, a timeout or an unregistered tool fails the
verdict with a reason (exception type and message, "timed out after Ns", ...). Each call runs in a
fresh interpreter (``python -I``) in its own session, with the arguments as JSON on stdin; on
timeout the whole process group is killed. Results come back as JSON in the verdict's details.

The calls of one answer run concurrently, and at most ``MAX_CONCURRENT_PROCESSES`` tool processes
run at once in this process (a bounded pool of slots shared by every request). With a
``VerificationBudget`` a call waits for a slot and runs at most until the request's budget is spent,
and then fails with the budget's reason. The verdict is the one a run in call order would give:
the first failing call, with the results of the calls before it.

Only functions in registered modules run (``tools.catalog`` by default): a verifier spec can come
from a client, and ``os:system`` must never be one call away. Not done: sandboxing beyond that
(resource limits, network isolation) — registered tools are trusted code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tools.verifiers.base import (
    UNBOUNDED,
    ModelOutput,
    Problem,
    Verdict,
    VerificationBudget,
    clip,
    failed,
    failed_problem,
    passed,
)

DEFAULT_EXECUTION_MODULES: tuple[str, ...] = ("tools.catalog",)
MAX_RESULT_CHARS = 64 * 1024
MAX_CONCURRENT_PROCESSES = 8
_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT_PROCESSES)
_TARGET_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z]\w*$")

# Runs in the child: read {"path", "target", "arguments"} from stdin, print one JSON reply.
_RUNNER = r"""
import importlib, json, sys
payload = json.loads(sys.stdin.read())
sys.path[:0] = payload["path"]
reply_to, sys.stdout = sys.stdout, sys.stderr
def reply(obj):
    reply_to.write(json.dumps(obj, ensure_ascii=False, allow_nan=False)); reply_to.flush()
try:
    module_name, _, attr = payload["target"].partition(":")
    result = getattr(importlib.import_module(module_name), attr)(**payload["arguments"])
except BaseException as exc:
    reply({"ok": False, "error": type(exc).__name__, "message": str(exc)[:2000]})
else:
    try:
        text = json.dumps(result, ensure_ascii=False, allow_nan=False)
        if len(text) > MAX:
            raise ValueError("too long")
        reply({"ok": True, "result": result})
    except (TypeError, ValueError, RecursionError):
        reply({"ok": True, "result": repr(result)[:MAX], "result_is_repr": True})
""".replace("MAX", str(MAX_RESULT_CHARS))


def check_target(target: Any, allowed_modules: tuple[str, ...] = DEFAULT_EXECUTION_MODULES) -> str | None:
    """Why ``target`` ("module:function") may not run, or None if it may."""
    if not isinstance(target, str) or not _TARGET_RE.match(target):
        return f"{clip(target)} is not of the form 'package.module:function'"
    module = target.split(":", 1)[0]
    if not any(module == prefix or module.startswith(prefix + ".") for prefix in allowed_modules):
        return f"{target!r} is outside the registered tool modules ({', '.join(allowed_modules) or 'none'})"
    return None


def _spawn(target: str, arguments: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    payload = json.dumps(
        {"path": [p for p in sys.path if isinstance(p, str)], "target": target, "arguments": arguments}
    )
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", _RUNNER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(payload.encode("utf-8"), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"ok": False, "timeout": True}
    try:
        reply = json.loads(out.decode("utf-8", errors="replace"))
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        return {
            "ok": False,
            "error": "ProcessError",
            "message": f"the tool process exited with code {proc.returncode} without a result",
        }
    return reply


def _run_one(target: str, arguments: dict[str, Any], timeout_s: float, budget: VerificationBudget) -> dict[str, Any]:
    """One call in a fresh interpreter, in one of the shared slots, within ``timeout_s`` and the budget."""
    if not _SLOTS.acquire(timeout=min(budget.remaining(), 3600.0)):
        return {"ok": False, "budget": True}
    try:
        left = budget.remaining()
        if left <= 0:
            return {"ok": False, "budget": True}
        try:
            reply = _spawn(target, arguments, min(timeout_s, left))
        except (TypeError, ValueError) as exc:  # arguments that are not JSON
            return {"ok": False, "unsendable": str(exc)}
        if reply.get("timeout") and left < timeout_s:
            return {"ok": False, "budget": True}
        return reply
    finally:
        _SLOTS.release()


def _reply_failure(reply: dict[str, Any], prefix: str, timeout_s: float, budget: VerificationBudget) -> Problem | None:
    """Why a call's reply fails the verdict (code and reason), or None if the call passed."""
    if reply.get("budget"):
        return Problem("timeout", f"{prefix}: {budget.reason()}")
    if "unsendable" in reply:
        return Problem("type_mismatch", f"{prefix}: arguments cannot be sent to the tool: {reply['unsendable']}")
    if reply.get("timeout"):
        return Problem("timeout", f"{prefix}: timed out after {timeout_s:g}s")
    if not reply.get("ok"):
        error, message = reply.get("error", "Error"), reply.get("message", "")
        text = f"{error}: {message}" if message else str(error)
        return Problem("execution_error", f"{prefix} raised {text}")
    return None


def verify_execution(
    output: ModelOutput,
    functions: dict[str, str],
    timeout_s: float = 5.0,
    *,
    allowed_modules: tuple[str, ...] = DEFAULT_EXECUTION_MODULES,
    budget: VerificationBudget = UNBOUNDED,
) -> Verdict:
    """Pass if every call's registered function runs to completion within ``timeout_s`` (and the budget)."""
    if output.parse_error:
        return failed(f"malformed tool call: {output.parse_error}", code="parse_error")
    if not output.tool_calls:
        return failed("the model made no tool call to execute", code="no_call")
    runnable: list[tuple[int, str, str, dict[str, Any]]] = []
    refusal: Problem | None = None
    for index, call in enumerate(output.tool_calls, start=1):
        target = functions.get(call.name)
        if target is None:
            refusal = Problem("unknown_tool", f"call {index}: tool {clip(call.name)} has no registered function")
            break
        refused = check_target(target, allowed_modules)
        if refused:
            refusal = Problem("verifier_error", f"call {index} {call.name}: {refused}")
            break
        runnable.append((index, call.name, target, call.arguments))
    if len(runnable) > 1:
        with ThreadPoolExecutor(min(len(runnable), MAX_CONCURRENT_PROCESSES), thread_name_prefix="rrr-exec") as pool:
            replies = list(pool.map(lambda r: _run_one(r[2], r[3], timeout_s, budget), runnable))
    else:
        replies = [_run_one(r[2], r[3], timeout_s, budget) for r in runnable]
    results: list[dict[str, Any]] = []
    for (index, name, _, _), reply in zip(runnable, replies, strict=True):
        problem = _reply_failure(reply, f"call {index} {name}", timeout_s, budget)
        if problem:
            return failed_problem(problem, results=results)
        results.append({"call": index, "name": name, "result": reply.get("result")})
    if refusal:
        return failed_problem(refusal, results=results)
    return passed(results=results)
