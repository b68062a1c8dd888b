"""An example rrr verifier plugin: a refund may not exceed the order's total (or a fixed cap).

rrr calls ``verify_refund(output, tools, messages, expected, params)`` for the calls the policy
routes here; it returns a plain ``{"ok", "reason", "code", "path"}`` dict so the package needs no
import of rrr (returning ``tools.verify.Verdict`` works too).
"""

from __future__ import annotations

import json
from typing import Any


def _order_totals(messages: list[dict[str, Any]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for message in messages:
        if message.get("role") != "tool" or not isinstance(message.get("content"), str):
            continue
        try:
            data = json.loads(message["content"])
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("total"), int | float) and "order_id" in data:
            totals[str(data["order_id"])] = float(data["total"])
    return totals


def verify_refund(output: Any, tools: list[Any], messages: list[dict[str, Any]], expected: Any, params: dict) -> dict:
    totals = _order_totals(messages)
    cap = params.get("max_amount")
    for call in output.tool_calls:
        if call.name != "issue_refund" or not isinstance(call.arguments, dict):
            continue
        amount = call.arguments.get("amount")
        if not isinstance(amount, int | float):
            continue  # the schema verifier judges types
        order = str(call.arguments.get("order_id"))
        if cap is not None and amount > cap:
            return {
                "ok": False,
                "reason": f"refunds above {cap} need a human",
                "code": "rule_violation",
                "path": "arguments.amount",
            }
        if order in totals and amount > totals[order]:
            return {
                "ok": False,
                "reason": f"the refund {amount} exceeds order {order}'s total {totals[order]}",
                "code": "rule_violation",
                "path": "arguments.amount",
            }
    return {"ok": True, "reason": ""}
