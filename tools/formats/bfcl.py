"""Berkeley Function Calling Leaderboard files converted to ``DatasetItem``s.

A question file is JSON Lines of ``{id, question, function}``: ``question`` is a list of turns,
each a list of chat messages (older files: one list of messages, or a string), flattened into one
message list; ``function`` lists ``{name, description, parameters: {type: "dict", properties,
required}}``. The ``possible_answer`` file (same file name in a ``possible_answer/`` folder next to
the questions, or given explicitly) holds ``{id, ground_truth: [{name: {param: [acceptable]}}]}``.

* Types are normalised to JSON Schema by ``tools.formats.types.normalize_schema`` (``dict`` ->
  object, ``float`` -> number, ``tuple`` -> array, ``any`` -> unconstrained, recursively).
* OpenAI function names may not contain dots, BFCL's may (``math.factorial``): the ``ToolSpec``
  and the expected calls use ``.`` -> ``_``; ``extra["tool_names"]`` maps new names to originals.
* Category = the id without its trailing ``_<n>`` (``live_simple_3-1-0`` -> ``live_simple``).
  ``irrelevance``/``live_irrelevance`` items, and items the answer file lacks, expect no call.
  ``live_relevance`` items expect *some* call (``extra["relevance"]``, no reference answer).
* Java and JavaScript categories get every parameter typed as a string, as BFCL itself does:
  their reference values are source-code literals.
Multi-turn categories are not supported (their ground truth is not call objects).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from tools.formats.item import DatasetError, DatasetItem, read_jsonl, require_object
from tools.formats.types import normalize_schema
from tools.spec import ToolSpec

logger = logging.getLogger(__name__)

_ID = re.compile(r"^(?P<category>.+?)_\d+(?:-\d+)*$")
_LANGUAGES = {
    "java": "Java",
    "simple_java": "Java",
    "javascript": "JavaScript",
    "simple_javascript": "JavaScript",
}


def bfcl_category(item_id: str) -> str:
    """``parallel_multiple_12`` -> ``parallel_multiple``; ids without a numeric tail are their own."""
    m = _ID.match(item_id)
    return m.group("category") if m else item_id


def openai_name(name: str) -> str:
    """A BFCL function name as an OpenAI-legal one (dots are not allowed there)."""
    return name.replace(".", "_")


def _string_typed(parameters: dict[str, Any], language: str) -> dict[str, Any]:
    props = {}
    for pname, schema in parameters.get("properties", {}).items():
        original = schema.get("type", "any") if isinstance(schema, dict) else "any"
        description = schema.get("description", "") if isinstance(schema, dict) else ""
        note = f"(a {language} {original} value, written as {language} source code)"
        props[pname] = {"type": "string", "description": f"{description} {note}".strip()}
    return {**parameters, "properties": props}


def convert_bfcl_function(fn: Any, where: str = "function", language: str | None = None) -> ToolSpec:
    """One BFCL function doc as a ``ToolSpec`` named with ``openai_name``."""
    if not isinstance(fn, dict):
        raise DatasetError(f"{where}: a function must be an object, got {type(fn).__name__}")
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise DatasetError(f"{where}: a function needs a non-empty string 'name'")
    params = fn.get("parameters") or {"type": "dict", "properties": {}}
    if not isinstance(params, dict):
        raise DatasetError(f"{where} ({name}): 'parameters' must be an object, got {type(params).__name__}")
    if language:
        params = _string_typed(params, language)
    parameters = normalize_schema({**params, "type": "object"})
    parameters.setdefault("properties", {})
    description = fn.get("description") or ""
    if not isinstance(description, str):
        raise DatasetError(f"{where} ({name}): 'description' must be a string")
    return ToolSpec(name=openai_name(name), description=description, parameters=parameters)


def convert_bfcl_functions(
    functions: Any, where: str = "function", category: str | None = None
) -> tuple[list[ToolSpec], dict[str, str]]:
    """A question's ``function`` field: the tools and a map {tool name: original BFCL name}."""
    if isinstance(functions, dict):
        functions = [functions]
    if not isinstance(functions, list):
        raise DatasetError(f"{where}: 'function' must be a list, got {type(functions).__name__}")
    language = _LANGUAGES.get(category or "")
    tools: list[ToolSpec] = []
    names: dict[str, str] = {}
    for i, fn in enumerate(functions):
        tool = convert_bfcl_function(fn, f"{where}, function {i}", language)
        original = fn["name"]
        if tool.name in names and names[tool.name] != original:
            raise DatasetError(f"{where}: functions {names[tool.name]!r} and {original!r} both become {tool.name!r}")
        names[tool.name] = original
        tools.append(tool)
    return tools, names


def _messages(question: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(question, str):
        return [{"role": "user", "content": question}]
    if not isinstance(question, list):
        raise DatasetError(f"{where}: 'question' must be a list of turns, got {type(question).__name__}")
    flat: list[Any] = []
    for turn in question:
        flat.extend(turn if isinstance(turn, list) else [turn])
    messages = []
    for k, msg in enumerate(flat):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or "content" not in msg:
            raise DatasetError(f"{where}: message {k} of 'question' needs 'role' and 'content'")
        messages.append(dict(msg))
    if not messages:
        raise DatasetError(f"{where}: 'question' has no messages")
    return messages


def convert_ground_truth(ground_truth: Any, where: str) -> list[dict[str, Any]]:
    """Check the BFCL ground-truth shape and apply ``openai_name`` to the function names."""
    if not isinstance(ground_truth, list):
        raise DatasetError(f"{where}: 'ground_truth' must be a list, got {type(ground_truth).__name__}")
    out: list[dict[str, Any]] = []
    for k, call in enumerate(ground_truth):
        if not (isinstance(call, dict) and len(call) == 1):
            raise DatasetError(
                f"{where}: ground truth {k} must be {{function name: {{param: [acceptable values]}}}} "
                "(multi-turn categories are not supported)"
            )
        ((fname, params),) = call.items()
        if not isinstance(params, dict):
            raise DatasetError(f"{where}: ground truth {k} ({fname}): parameters must be an object")
        for pname, acceptable in params.items():
            if not isinstance(acceptable, list):
                raise DatasetError(
                    f"{where}: ground truth {k} ({fname}): {pname!r} must be a list of acceptable values"
                )
        out.append({openai_name(fname): params})
    return out


def default_answers_path(questions: str | Path) -> Path | None:
    """BFCL's layout: ``<dir>/possible_answer/<same name>``; None if that file does not exist."""
    p = Path(questions)
    candidate = p.parent / "possible_answer" / p.name
    return candidate if candidate.is_file() else None


def load_bfcl_answers(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """``{id: expected}`` from a possible_answer file."""
    answers: dict[str, list[dict[str, Any]]] = {}
    for rec in read_jsonl(path):
        obj = require_object(rec)
        if not isinstance(obj.get("id"), str):
            raise DatasetError(f"{rec.where}: missing string 'id'")
        if "ground_truth" not in obj:
            raise DatasetError(f"{rec.where}: missing 'ground_truth'")
        if obj["id"] in answers:
            raise DatasetError(f"{rec.where}: duplicate id {obj['id']!r}")
        answers[obj["id"]] = convert_ground_truth(obj["ground_truth"], rec.where)
    return answers


def convert_bfcl_question(
    obj: dict[str, Any], where: str, answers: dict[str, list[dict[str, Any]]] | None
) -> DatasetItem:
    """One question record joined with its answer (``answers`` None: no answer file at all)."""
    item_id = obj.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise DatasetError(f"{where}: missing string 'id'")
    where = f"{where} ({item_id})"
    for key in ("question", "function"):
        if key not in obj:
            raise DatasetError(f"{where}: missing {key!r}")
    category = bfcl_category(item_id)
    tools, names = convert_bfcl_functions(obj["function"], where, category)
    extra: dict[str, Any] = {"category": category}
    if any(new != old for new, old in names.items()):
        extra["tool_names"] = {new: old for new, old in names.items() if new != old}
    expected: list[dict[str, Any]] = []
    if "irrelevance" in category:
        pass
    elif category.endswith("relevance"):
        extra["relevance"] = True
    elif answers is None:
        extra["has_ground_truth"] = False
    elif item_id in answers:
        expected = answers[item_id]
    else:
        logger.warning("%s: no ground truth for %s; it is scored as 'no call expected'", where, item_id)
    return DatasetItem(
        id=item_id, messages=_messages(obj["question"], where), tools=tools, expected=expected, extra=extra
    )


def load_bfcl(path: str | Path, answers: str | Path | None = None) -> list[DatasetItem]:
    """Questions joined with their possible answers (``answers`` defaults to BFCL's layout)."""
    answers_path = answers if answers is not None else default_answers_path(path)
    table = load_bfcl_answers(answers_path) if answers_path is not None else None
    items: list[DatasetItem] = []
    seen: set[str] = set()
    for rec in read_jsonl(path):
        item = convert_bfcl_question(require_object(rec), rec.where, table)
        if item.id in seen:
            raise DatasetError(f"{rec.where}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    return items


def load_bfcl_tools(path: str | Path) -> list[ToolSpec]:
    """Every question's tools, in file order (not deduplicated)."""
    out: list[ToolSpec] = []
    for rec in read_jsonl(path):
        obj = require_object(rec)
        category = bfcl_category(obj["id"]) if isinstance(obj.get("id"), str) else None
        tools, _ = convert_bfcl_functions(obj.get("function", []), rec.where, category)
        out.extend(tools)
    return out
