"""The prompts of the reflect/retry loop, shared by the serving agent and the learner.

The learner renders its training prompts with these same functions, so that what the policy is
trained on is byte-identical to what it sees when serving. Failed output and verifier text are
quoted inside delimiters and truncated (R12): they are data, never instructions.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tools.toolcall_formats import DEFAULT_TOOL_CALL_PARSER, tool_call_format

# Verbatim from the paper (Bensal et al., arXiv 2505.24726).
REFLECTION_PROMPT = (
    "You tried performing the task, but failed in generating the correct tool call. "
    "Reflect on what went wrong and write a short explanation that will help you do better next time."
)
MATH_REFLECTION_PROMPT = (
    "You tried solving the problem and got the wrong answer. "
    "Reflect on what went wrong and write a short explanation that will help you do better next time."
)
RETRY_PROMPT = "Try again."
QUOTE_CAP = 2000


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def truncate(text: str, cap: int = QUOTE_CAP) -> str:
    """Cut ``text`` to ``cap`` characters, saying how much was left out.

    Model output is quoted back to the model, so lone surrogates (which no UTF-8 request can carry)
    become U+FFFD here.
    """
    text = _LONE_SURROGATE.sub("\ufffd", text)
    if len(text) <= cap:
        return text
    return text[:cap] + f"... [{len(text) - cap} more characters]"


def _quote_json(value: Any) -> str:
    """``value`` as JSON text for a quote; whatever cannot be written so is named by its type."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return f"<{type(value).__name__}>"


def failed_assistant_message(
    content: str | None, tool_calls: list[Any] | None, *, tool_call_parser: str = DEFAULT_TOOL_CALL_PARSER
) -> dict[str, Any]:
    """The failed attempt as a plain assistant turn, truncated to the quote cap.

    Tool calls are written out as text in the content, in the model's own tool-call format
    (``tool_call_parser``, vLLM's parser name; hermes ``<tool_call>`` blocks by default), rather than
    as ``tool_calls``: an OpenAI-strict server would otherwise demand tool results for them, and the
    chat templates render calls as exactly this text anyway. The calls are model output and may be
    anything: an item that is not an object is quoted as the JSON it was, and a ``function`` that is
    not an object counts as an empty one. Never raises (an unknown parser name is a ValueError).
    """
    fmt = tool_call_format(tool_call_parser)
    parts = [content] if isinstance(content, str) and content else []
    quoted: list[Any] = []
    for call in tool_calls if isinstance(tool_calls, list) else []:
        if not isinstance(call, dict):
            quoted.append(call)
            continue
        fn = call.get("function", {})
        if not isinstance(fn, dict):
            fn = {}
        arguments = fn.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = _quote_json(arguments)
        quoted.append((fn.get("name", ""), arguments))
    if quoted:
        parts.append(fmt.quote(quoted))
    return {"role": "assistant", "content": truncate("\n".join(parts))}


def reflection_request(reason: str | None = None, *, math: bool = False) -> dict[str, Any]:
    """The user turn that asks for a self-reflection; with ``reason``, the verifier's words are quoted."""
    text = MATH_REFLECTION_PROMPT if math else REFLECTION_PROMPT
    if reason:
        text += "\n\nThe checker said:\n<verifier>\n" + truncate(reason, 500) + "\n</verifier>"
    return {"role": "user", "content": text}


def reflection_messages(
    messages: list[dict[str, Any]],
    failed: dict[str, Any],
    reason: str | None = None,
    *,
    math: bool = False,
) -> list[dict[str, Any]]:
    """History for the reflection call: the task, the failed attempt, the reflection request."""
    return [*messages, failed, reflection_request(reason, math=math)]


def retry_messages(reflection_history: list[dict[str, Any]], reflection: str) -> list[dict[str, Any]]:
    """History for the retry: the reflection history, the model's reflection, and the retry request."""
    return [
        *reflection_history,
        {"role": "assistant", "content": truncate(reflection)},
        {"role": "user", "content": RETRY_PROMPT},
    ]
