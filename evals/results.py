"""The evaluation's per-item results and the output folder that makes a run resumable.

Who calls it: ``evals.run`` (scores a trace into an ``ItemResult``, appends it,
reads what an earlier run wrote) and anything that reads ``items.jsonl`` back (the report, the
demo). Layout of an output folder:

    run.json      the dataset, --attempts and --scorer the results belong to (a rerun must match;
                  one without --scorer takes the folder's, a folder from before --scorer is ``reference``)
    items.jsonl   one ItemResult per line, append-only, written as each item finishes
    summary.json, table.md, chart.png   written by ``evals.report`` at the end

A crash can leave the last line of ``items.jsonl`` half written; reading drops such a line (and
cuts it off the file before anything is appended), so that item simply runs again. A damaged line
anywhere else is an error naming the line: results are never silently lost.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evals.items import EvalTask, model_output, score_answer
from evals.runners import Trace

log = logging.getLogger(__name__)

RESULTS = "items.jsonl"
MANIFEST = "run.json"
MANIFEST_DEFAULTS: dict[str, Any] = {"scorer": "reference"}
"""Manifest keys a rerun may leave unset (None: take the folder's), with their value in a folder that lacks them."""


class OutputError(ValueError):
    """The output folder cannot be used (another run's results, a damaged file); says what to do."""


@dataclass
class AttemptResult:
    """One answer attempt (1 = the first answer, 2 = the retry after the first reflection, ...)."""

    number: int
    ok: bool
    reason: str
    content: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    parse_error: str | None = None
    finish_reason: str | None = None
    reflection: str | None = None
    """The self-reflection this attempt was given (None for the first attempt)."""
    served_ok: bool | None = None
    """rrr's own verdict while serving (the score above is the run's scorer's, ``reference`` by default)."""
    code: str | None = None
    """The failure code of a failed attempt (``tools.verify.FAILURE_CODES``)."""
    path: str | None = None
    """The argument that failure is about, where one applies (``arguments.city``)."""


@dataclass
class ItemResult:
    """One dataset item evaluated on one model name."""

    model: str
    id: str
    task: str
    attempts: list[AttemptResult]
    category: str | None = None
    status: str | None = None
    episode_id: str | None = None
    adapter: str | None = None
    error: str | None = None

    def ok_at(self, k: int) -> bool:
        """Solved within the first ``k`` attempts (accuracy at attempt k, as the paper reports it)."""
        return any(a.ok for a in self.attempts[:k])

    def to_dict(self, attempts: int) -> dict[str, Any]:
        data = asdict(self)
        data["ok_at"] = [self.ok_at(k) for k in range(1, attempts + 1)]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemResult:
        fields = {k: v for k, v in data.items() if k != "ok_at"}
        fields["attempts"] = [AttemptResult(**a) for a in data.get("attempts") or []]
        return cls(**fields)


def score_trace(task: EvalTask, model: str, trace: Trace, attempts: int, scorer: str = "reference") -> ItemResult:
    """Score every answer attempt of an episode by ``scorer`` (at most ``attempts``)."""
    scored: list[AttemptResult] = []
    reflection: str | None = None
    for step in trace.steps:
        content = step.message.get("content")
        if step.kind == "reflection":
            reflection = content if isinstance(content, str) else ""
            continue
        if len(scored) == attempts:
            break
        verdict = score_answer(task, step.message, step.finish_reason, scorer)
        output = model_output(step.message, step.finish_reason)
        scored.append(
            AttemptResult(
                number=len(scored) + 1,
                ok=verdict.ok,
                reason=verdict.reason,
                code=verdict.code,
                path=verdict.path,
                content=output.content,
                tool_calls=[c.to_dict() for c in output.tool_calls],
                parse_error=output.parse_error,
                finish_reason=step.finish_reason,
                reflection=reflection,
                served_ok=step.served_ok,
            )
        )
        reflection = None
    return ItemResult(
        model=model,
        id=task.id,
        task=task.item.task,
        attempts=scored,
        category=task.item.category,
        status=trace.status,
        episode_id=trace.episode_id,
        adapter=trace.adapter,
        error=trace.error,
    )


class EvalOutput:
    """An output folder: the run's manifest and its append-only results file."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.results_path = self.folder / RESULTS
        self.manifest_path = self.folder / MANIFEST
        self.manifest: dict[str, Any] = {}
        """The run's manifest once ``open`` returned (keys of ``MANIFEST_DEFAULTS`` filled in)."""

    def open(self, manifest: dict[str, Any]) -> list[ItemResult]:
        """Create the folder or check it belongs to the same run; return the results already written.

        A key of ``MANIFEST_DEFAULTS`` given as None takes the folder's value (or the default)."""
        wanted = dict(manifest)
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputError(f"--out {self.folder} is a file, not a folder")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create --out {self.folder}: {exc.strerror or exc}") from None
        if self.manifest_path.is_file():
            try:
                old = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise OutputError(f"{self.manifest_path} is damaged; use another --out") from None
            for key in ("dataset", "attempts"):
                if old.get(key) != manifest.get(key):
                    raise OutputError(
                        f"--out {self.folder} holds results of another evaluation ({key} {old.get(key)!r}, "
                        f"now {manifest.get(key)!r}); use another --out to start a new one"
                    )
            for key, default in MANIFEST_DEFAULTS.items():
                stored = old.get(key) or default
                if key in wanted and wanted[key] is not None and wanted[key] != stored:
                    raise OutputError(
                        f"--out {self.folder} holds results of another evaluation ({key} {stored!r}, "
                        f"now {wanted[key]!r}); give --{key} {stored} or use another --out to start a new one"
                    )
                if key in wanted:
                    wanted[key] = stored
        else:
            for key, default in MANIFEST_DEFAULTS.items():
                if key in wanted and wanted[key] is None:
                    wanted[key] = default
            _write_atomic(self.manifest_path, json.dumps(wanted, indent=2, sort_keys=True) + "\n")
        self.manifest = wanted
        return self._read()

    def _read(self) -> list[ItemResult]:
        if not self.results_path.exists():
            return []
        raw = self.results_path.read_bytes()
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # tail: text after the last newline (b"" if none)
        results: list[ItemResult] = []
        keep = len(raw)
        for lineno, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            try:
                results.append(ItemResult.from_dict(json.loads(line)))
            except (ValueError, TypeError, AttributeError) as exc:
                if lineno == len(complete) and not tail.strip():
                    log.warning("%s, line %d: dropped a damaged last line (%s)", self.results_path, lineno, exc)
                    keep = len(raw) - len(line) - 1
                    continue
                raise OutputError(
                    f"{self.results_path}, line {lineno}: not a result ({exc}); "
                    "fix or remove that line, or use another --out"
                ) from None
        if tail.strip():
            try:
                results.append(ItemResult.from_dict(json.loads(tail)))
                with self.results_path.open("ab") as fh:  # complete, only its newline was lost
                    fh.write(b"\n")
            except (ValueError, TypeError, AttributeError):
                log.warning("%s: dropped a torn last line (the item runs again)", self.results_path)
                keep = len(raw) - len(tail)
        if keep < len(raw):
            with self.results_path.open("r+b") as fh:
                fh.truncate(keep)
        return results

    def append(self, result: ItemResult, attempts: int) -> None:
        """Write one result as one line, flushed to disk before the next item counts as done."""
        line = json.dumps(result.to_dict(attempts), ensure_ascii=False, default=str) + "\n"
        with self.results_path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
