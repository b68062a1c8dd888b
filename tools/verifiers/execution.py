"""Execution verifier: run each call's registered Python function in a subprocess with a timeout.

A call passes if its function returns; an exception, a timeout or an unregistered tool fails the
verdict with a reason (exception type and message, "timed out after Ns", ...). Each call runs in a
fresh interpreter (``python -I``) in its own session, with the arguments as JSON on stdin; on
timeout the whole process group is killed. Results come back as JSON in the verdict's details.

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
from typing import Any

from tools.verifiers.base import ModelOutput, Verdict, clip, failed, passed

DEFAULT_EXECUTION_MODULES: tuple[str, ...] = ("tools.catalog",)
MAX_RESULT_CHARS = 64 * 1024
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


def _run_one(target: str, arguments: dict[str, Any], timeout_s: float) -> dict[str, Any]:
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


def verify_execution(
    output: ModelOutput,
    functions: dict[str, str],
    timeout_s: float = 5.0,
    *,
    allowed_modules: tuple[str, ...] = DEFAULT_EXECUTION_MODULES,
) -> Verdict:
    """Pass if every call's registered function runs to completion within ``timeout_s``."""
    if output.parse_error:
        return failed(f"malformed tool call: {output.parse_error}")
    if not output.tool_calls:
        return failed("the model made no tool call to execute")
    results: list[dict[str, Any]] = []
    for index, call in enumerate(output.tool_calls, start=1):
        target = functions.get(call.name)
        if target is None:
            return failed(f"call {index}: tool {clip(call.name)} has no registered function", results=results)
        refusal = check_target(target, allowed_modules)
        if refusal:
            return failed(f"call {index} {call.name}: {refusal}", results=results)
        try:
            reply = _run_one(target, call.arguments, timeout_s)
        except (TypeError, ValueError) as exc:  # arguments that are not JSON
            return failed(f"call {index} {call.name}: arguments cannot be sent to the tool: {exc}", results=results)
        if reply.get("timeout"):
            return failed(f"call {index} {call.name}: timed out after {timeout_s:g}s", results=results)
        if not reply.get("ok"):
            error, message = reply.get("error", "Error"), reply.get("message", "")
            text = f"{error}: {message}" if message else str(error)
            return failed(f"call {index} {call.name} raised {text}", results=results)
        results.append({"call": index, "name": call.name, "result": reply.get("result")})
    return passed(results=results)
