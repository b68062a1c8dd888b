"""Tool-call text formats, keyed by vLLM's ``--tool-call-parser`` names: parse model text, render calls.

Who calls it: the local engine and its server (``parse`` on every answer, docs/vllm.md §3.5 and
§3.9), the learner's reward (``parse`` on every retry), the prompts that quote a failed attempt
back to the model (``quote``), and tests (``render``). The format is chosen by model
configuration (``rrr engine serve --tool-call-parser``, ``RRR_TOOL_CALL_PARSER``, the learner's
config); ``hermes`` is the default, and an unknown name fails at startup with the supported ones.

Each parser reproduces vLLM's non-streaming ``extract_tool_calls`` for complete output, as of the
parsers in ``vllm/tool_parsers/`` (``hermes_tool_parser.py``, ``llama_tool_parser.py``,
``mistral_tool_parser.py``, ``pythonic_tool_parser.py`` with the shared helpers of
``tool_parsers/utils.py``): what vLLM returns as content is the content here, and where vLLM gives
up (it logs an exception, or the request fails) the parse has ``error`` set and no calls. As for
hermes (``tools.parse``), a call whose arguments are not a strict JSON object, or whose name is
empty, is an error here although vLLM would pass it on; ``parse_openai_tool_calls`` would reject
it downstream, so the verdict is the same. Nothing here raises on model output.

Rendering writes calls the way a model of that family does (its chat template's text for an
assistant turn with calls); ``parse(render(calls))`` gives the calls back. Deliberately not done:
streaming (the server collects non-hermes output and parses it at the end), Mistral's v11+
tokenizer format (``[TOOL_CALLS]name{args}``: only ``mistral_common`` tokenizers produce it).
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tools.parse import MAX_ARGUMENTS_CHARS, HermesParse, parse_arguments, parse_hermes, strict_loads
from tools.spec import ToolCall

ToolCallParse = HermesParse
"""vLLM's ``ExtractedToolCallInformation`` (tools_called, tool_calls, content) plus the reason vLLM only logs."""

DEFAULT_TOOL_CALL_PARSER = "hermes"
PYTHON_TAG = "<|python_tag|>"
MISTRAL_TOOL_CALLS = "[TOOL_CALLS]"


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _failed(text: str, reason: str, content: str | None = None) -> ToolCallParse:
    return ToolCallParse(False, [], text if content is None else content, reason)


def _strict_call(name: Any, arguments_json: str) -> tuple[ToolCall | None, str | None]:
    """A call from a name and vLLM's arguments string, under rrr's strict rules (see the module doc)."""
    if not isinstance(name, str):
        return None, f'"name" must be a string, got {type(name).__name__}'
    if not name.strip():
        return None, '"name" is empty'
    arguments, reason = parse_arguments(arguments_json)
    if arguments is None:
        return None, f"{name}: arguments: {reason}"
    return ToolCall(name=name, arguments=arguments), None


# --- llama3_json --------------------------------------------------------------------------------
# vLLM: every "{" outside an object already decoded starts a JSON object (json raw_decode); each
# must have "name" and "arguments" (or Llama 3.1's "parameters"); one that does not decode or lacks
# a key makes the whole output content. Text around the objects (";" separators, prose) is dropped.

_JSON = json.JSONDecoder()


def parse_llama3_json(text: str) -> ToolCallParse:
    if not isinstance(text, str):
        return ToolCallParse(False, [], None, f"model output must be text, got {type(text).__name__}")
    if PYTHON_TAG not in text and "{" not in text:
        return ToolCallParse(False, [], text, None)
    calls: list[ToolCall] = []
    end = -1
    start = text.find("{")
    while start >= 0:
        if start > end:  # vLLM skips a "{" at or before the end of the last object
            reason: str | None
            try:
                obj, stop = _JSON.raw_decode(text, start)
            except json.JSONDecodeError as exc:
                return _failed(text, f"JSON object {len(calls) + 1}: invalid JSON: {exc.msg} at column {exc.colno}")
            except (ValueError, RecursionError) as exc:
                return _failed(text, f"JSON object {len(calls) + 1}: invalid JSON: {_clip(str(exc))}")
            end = stop
            if "name" not in obj:
                return _failed(text, f'JSON object {len(calls) + 1}: missing "name"')
            key = "arguments" if "arguments" in obj else "parameters"
            if key not in obj:
                return _failed(text, f'JSON object {len(calls) + 1}: missing "arguments" (or "parameters")')
            try:  # strict again, on the object's own text: duplicate keys, huge integers, NaN
                strict = strict_loads(text[start:stop])
            except ValueError as exc:
                return _failed(text, f"JSON object {len(calls) + 1}: {exc}")
            call, reason = _strict_call(strict["name"], _dumps(strict[key]))
            if call is None:
                return _failed(text, f"JSON object {len(calls) + 1}: {reason}")
            calls.append(call)
        start = text.find("{", start + 1)
    if not calls:
        return ToolCallParse(False, [], text, None)
    return ToolCallParse(True, calls, None, None)


def render_llama3_json(calls: Sequence[ToolCall]) -> str:
    """Llama 3.1's JSON tool calls: ``{"name": ..., "parameters": {...}}``, several joined by "; "."""
    return "; ".join(_dumps({"name": c.name, "parameters": c.arguments}) for c in calls)


# --- mistral ------------------------------------------------------------------------------------
# vLLM (tokenizers before Mistral's v11, i.e. every Hugging Face tokenizer): content before one
# [TOOL_CALLS] token, then a JSON list of {"name", "arguments"} objects. If the list does not
# decode, the outermost "[{...}]" in it is tried; if that fails too, the text after the token
# (stripped) is the content. More than one token, or a decoded value of the wrong shape, is an
# error in vLLM's request; here it is an error with the whole text as content.


def _outer_list(body: str) -> str | None:
    """What vLLM's greedy ``\\[{.*}\\]`` (dot matches newlines) finds first: the first "[{" to the last "}]"."""
    start, end = body.find("[{"), body.rfind("}]")
    return body[start : end + 2] if start >= 0 and end >= start + 2 else None


def _mistral_calls(value: Any, *, arguments_as_text: bool) -> tuple[list[ToolCall] | None, str | None]:
    if not isinstance(value, list):
        return None, f"expected a JSON list of calls, got {type(value).__name__}"
    calls = []
    for index, item in enumerate(value, start=1):
        if not isinstance(item, dict) or "name" not in item or "arguments" not in item:
            return None, f'call {index}: expected an object with "name" and "arguments"'
        raw = item["arguments"]
        if arguments_as_text and not isinstance(raw, str):
            # vLLM keeps the recovered list's arguments as decoded, and only a string is a valid one there
            return None, f"call {index}: arguments must be a JSON string in a recovered list"
        call, reason = _strict_call(item["name"], raw if arguments_as_text else _dumps(raw))
        if call is None:
            return None, f"call {index}: {reason}"
        calls.append(call)
    return calls, None


def parse_mistral(text: str) -> ToolCallParse:
    if not isinstance(text, str):
        return ToolCallParse(False, [], None, f"model output must be text, got {type(text).__name__}")
    if MISTRAL_TOOL_CALLS not in text:
        return ToolCallParse(False, [], text, None)
    content, *raw = text.split(MISTRAL_TOOL_CALLS)
    if len(raw) != 1:
        return _failed(text, f"{MISTRAL_TOOL_CALLS} appears {len(raw)} times; only one is allowed")
    body = raw[0].strip()
    if len(body) > MAX_ARGUMENTS_CHARS:
        return _failed(text, f"tool calls are {len(body)} characters long; the limit is {MAX_ARGUMENTS_CHARS}")
    decoded, recovered = body, False
    try:
        json.loads(body)  # vLLM's own decode first, so that its verdict is ours
    except json.JSONDecodeError as first:
        found = _outer_list(body)
        try:
            if found is None:
                raise first
            json.loads(found)
        except json.JSONDecodeError as exc:
            reason = f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            return _failed(text, f"after {MISTRAL_TOOL_CALLS}: {reason}", content=body)
        except (ValueError, RecursionError) as exc:
            return _failed(text, f"after {MISTRAL_TOOL_CALLS}: invalid JSON: {_clip(str(exc))}")
        decoded, recovered = found, True
    except (ValueError, RecursionError) as exc:
        return _failed(text, f"after {MISTRAL_TOOL_CALLS}: invalid JSON: {_clip(str(exc))}")
    try:
        value = strict_loads(decoded)
    except ValueError as exc:
        return _failed(text, f"after {MISTRAL_TOOL_CALLS}: {exc}")
    calls, problem = _mistral_calls(value, arguments_as_text=recovered)
    if calls is None:
        return _failed(text, f"{MISTRAL_TOOL_CALLS}: {problem}")
    return ToolCallParse(True, calls, content if content else None, None)


def render_mistral(calls: Sequence[ToolCall]) -> str:
    """Mistral's calls: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]``."""
    return f"{MISTRAL_TOOL_CALLS} " + _dumps([{"name": c.name, "arguments": c.arguments} for c in calls])


# --- pythonic -----------------------------------------------------------------------------------
# vLLM: the output must begin like "[name(...), ...]" (a pattern match from the first character)
# and be, as a whole, a Python module whose first statement is a list of calls. Keyword values
# must be literals (JSON-like; tuples and sets become lists, -1 and +1 are numbers, null/true/false
# are accepted); positional arguments are ignored. Anything else: the whole text is content.

_NAME = re.compile(r"[a-zA-Z]\w*")
_NAME_EQ = re.compile(r"[a-zA-Z]\w*=")
_SPACE = re.compile(r"\s*")
_CLOSING = re.compile(r"\)\s*\]")


def _skip_space(text: str, pos: int) -> int:
    match = _SPACE.match(text, pos)
    return match.end() if match is not None else pos


def _looks_pythonic(text: str) -> bool:
    """vLLM's prefix pattern for a list of calls, decided left to right without backtracking.

    A call is ``name(`` followed by nothing or by ``key=``; once a call has ``key=``, everything up
    to any later ``)`` then ``]`` belongs to it. Calls without arguments are followed by ``,`` (more
    calls; only before the first call without a comma), by whitespace and another call, or by ``]``.
    """
    if not text.startswith("["):
        return False
    pos, commas_allowed = 1, True
    while True:
        name = _NAME.match(text, pos)
        if name is None or text[name.end() : name.end() + 1] != "(":
            return False
        inner = name.end() + 1
        keyword = _NAME_EQ.match(text, inner)
        if keyword is not None:
            return _CLOSING.search(text, keyword.end()) is not None
        if text[inner : inner + 1] != ")":
            return False
        after = inner + 1
        if commas_allowed and text[after : after + 1] == ",":
            pos = _skip_space(text, after + 1)
            continue
        commas_allowed = False
        pos = _skip_space(text, after)
        if text[pos : pos + 1] == "]":
            return True


class _NotALiteral(ValueError):
    pass


_NAME_LITERALS: dict[str, Any] = {"null": None, "true": True, "false": False}


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant):
        if node.value is None or isinstance(node.value, str | int | float):
            return node.value
        raise _NotALiteral(f"{type(node.value).__name__} values are not JSON")
    if isinstance(node, ast.Dict):
        if not all(isinstance(k, ast.Constant) for k in node.keys):
            raise _NotALiteral("dict keys must be literals")
        return {k.value: _literal(v) for k, v in zip(node.keys, node.values, strict=True)}  # type: ignore[union-attr]
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return [_literal(v) for v in node.elts]
    if isinstance(node, ast.JoinedStr) and all(isinstance(p, ast.Constant) for p in node.values):
        return "".join(str(p.value) for p in node.values)  # type: ignore[attr-defined]
    if isinstance(node, ast.Name) and node.id in _NAME_LITERALS:
        return _NAME_LITERALS[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _literal(node.operand)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    raise _NotALiteral(f"argument values must be literals, got {type(node).__name__}")


def _call_name(node: ast.expr) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise _NotALiteral("a call's function must be a name")
    return ".".join([node.id, *reversed(parts)])


def _pythonic_call(node: ast.Call) -> ToolCall:
    name = _call_name(node.func)
    arguments: dict[str, Any] = {}
    for keyword in node.keywords:
        if keyword.arg is None:  # vLLM would name it null; no tool has such a parameter
            raise _NotALiteral(f"{name}: ** arguments are not supported")
        arguments[keyword.arg] = _literal(keyword.value)
    try:
        raw = _dumps(arguments)
    except (TypeError, ValueError, RecursionError) as exc:
        raise _NotALiteral(f"{name}: arguments are not JSON: {_clip(str(exc))}") from None
    call, reason = _strict_call(name, raw)
    if call is None:
        raise _NotALiteral(reason or "invalid call")
    return call


def parse_pythonic(text: str) -> ToolCallParse:
    if not isinstance(text, str):
        return ToolCallParse(False, [], None, f"model output must be text, got {type(text).__name__}")
    if not _looks_pythonic(text):
        return ToolCallParse(False, [], text, None)
    if len(text) > MAX_ARGUMENTS_CHARS:
        return _failed(text, f"tool calls are {len(text)} characters long; the limit is {MAX_ARGUMENTS_CHARS}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning for odd escapes, as vLLM's logs would show
            module = ast.parse(text)
        value = getattr(module.body[0], "value", None) if module.body else None
        if not isinstance(value, ast.List) or not all(isinstance(e, ast.Call) for e in value.elts):
            return _failed(text, "the output must be a Python list of function calls")
        calls = [_pythonic_call(e) for e in value.elts]  # type: ignore[arg-type]
    except _NotALiteral as exc:
        return _failed(text, str(exc))
    except SyntaxError as exc:
        return _failed(text, f"not valid Python: {exc.msg} at line {exc.lineno} column {exc.offset}")
    except (ValueError, RecursionError, MemoryError) as exc:  # NUL bytes, nesting too deep
        return _failed(text, f"not valid Python: {_clip(str(exc)) or type(exc).__name__}")
    return ToolCallParse(True, calls, None, None)


def python_literal(value: Any) -> str:
    """A JSON value as the Python literal a pythonic model writes (None/True/False, repr strings)."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int | float | str):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{python_literal(k)}: {python_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(python_literal(v) for v in value) + "]"
    return repr(value)


def _python_call(name: str, arguments: dict[str, Any]) -> str:
    return f"{name}(" + ", ".join(f"{k}={python_literal(v)}" for k, v in arguments.items()) + ")"


def render_pythonic(calls: Sequence[ToolCall]) -> str:
    """Llama 3.2 / 4's pythonic calls: ``[get_weather(city='Paris'), get_time()]``.

    Argument names are written as keywords, so only names that are Python identifiers and not
    keywords (``from``, ``class``) parse back: the format cannot express others, in vLLM either.
    """
    return "[" + ", ".join(_python_call(c.name, c.arguments) for c in calls) + "]"


# --- hermes -------------------------------------------------------------------------------------


def render_hermes(calls: Sequence[ToolCall]) -> str:
    """Hermes / Qwen2.5 blocks: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``."""
    return "\n".join(
        f'<tool_call>\n{{"name": {_dumps(c.name)}, "arguments": {_dumps(c.arguments)}}}\n</tool_call>' for c in calls
    )


# --- quoting a failed attempt -------------------------------------------------------------------

QuotedCall = tuple[Any, str] | None
"""A call as an engine returned it: (name as sent, arguments text as sent), or None when the item
was not a call object at all (then its JSON is quoted in the call's place)."""


def _quote_json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return f"<{type(value).__name__}>"


def _quoted_object(item: QuotedCall | Any, key: str) -> str:
    if not isinstance(item, tuple):
        return _quote_json(item)
    name, arguments = item
    return f'{{"name": {_quote_json(name)}, "{key}": {arguments}}}'


def _quote_hermes(items: Sequence[Any]) -> str:
    return "\n".join(f"<tool_call>\n{_quoted_object(i, 'arguments')}\n</tool_call>" for i in items)


def _quote_llama3(items: Sequence[Any]) -> str:
    return "; ".join(_quoted_object(i, "parameters") for i in items)


def _quote_mistral(items: Sequence[Any]) -> str:
    return f"{MISTRAL_TOOL_CALLS} [" + ", ".join(_quoted_object(i, "arguments") for i in items) + "]"


def _quote_pythonic(items: Sequence[Any]) -> str:
    parts = []
    for item in items:
        if not isinstance(item, tuple):
            parts.append(_quote_json(item))
            continue
        name, raw = item
        label = name if isinstance(name, str) else _quote_json(name)
        arguments, _ = parse_arguments(raw)
        parts.append(_python_call(label, arguments) if arguments is not None else f"{label}({raw})")
    return "[" + ", ".join(parts) + "]"


# --- the registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCallFormat:
    """One model family's tool-call text, under vLLM's parser name."""

    name: str
    parse: Callable[[str], ToolCallParse]
    """vLLM's non-streaming extraction (never raises)."""
    render: Callable[[Sequence[ToolCall]], str]
    """Calls as the model writes them; ``parse(render(calls))`` gives them back."""
    quote: Callable[[Sequence[Any]], str]
    """Calls as an engine returned them (``QuotedCall`` items, arguments text kept verbatim), for
    quoting a failed attempt back to the model; never raises."""
    keeps_special_tokens: bool
    """vLLM decodes with special tokens kept when this parser may see calls (its tags are tokens)."""
    marker: str | None
    """Text whose presence means the model tried a call (None: no single marker)."""


TOOL_CALL_FORMATS: dict[str, ToolCallFormat] = {
    f.name: f
    for f in (
        ToolCallFormat("hermes", parse_hermes, render_hermes, _quote_hermes, True, "<tool_call>"),
        ToolCallFormat("llama3_json", parse_llama3_json, render_llama3_json, _quote_llama3, False, None),
        ToolCallFormat("mistral", parse_mistral, render_mistral, _quote_mistral, True, MISTRAL_TOOL_CALLS),
        ToolCallFormat("pythonic", parse_pythonic, render_pythonic, _quote_pythonic, False, None),
    )
}
SUPPORTED_TOOL_CALL_PARSERS = tuple(TOOL_CALL_FORMATS)


def check_tool_call_parser(name: str) -> str:
    """``name`` if it is a supported parser name, else ValueError listing the supported ones."""
    if name not in TOOL_CALL_FORMATS:
        raise ValueError(
            f"unknown tool-call parser {name!r}; supported (vLLM's --tool-call-parser names): "
            + ", ".join(SUPPORTED_TOOL_CALL_PARSERS)
        )
    return name


def tool_call_format(name: str = DEFAULT_TOOL_CALL_PARSER) -> ToolCallFormat:
    """The format registered under vLLM's parser ``name`` (ValueError for an unknown one)."""
    return TOOL_CALL_FORMATS[check_tool_call_parser(name)]
