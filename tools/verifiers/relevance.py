"""BFCL's `live_relevance` rule: the answer must call some tool; which one, and with what, is not judged.

Used as the `relevance` verifier spec (serving, mining, the gate) and by `tools.score.score_item`,
so every path judges these items by this one function. A call that did not parse is no call.
"""

from __future__ import annotations

from tools.verifiers.base import ModelOutput, Verdict, failed, passed


def verify_relevance(output: ModelOutput) -> Verdict:
    """Passes when the output holds at least one well-formed tool call."""
    if output.parse_error:
        return failed(f"the tool call could not be parsed: {output.parse_error}", code="parse_error")
    if not output.tool_calls:
        return failed("expected a tool call, got none", code="no_call")
    return passed(calls=len(output.tool_calls))
