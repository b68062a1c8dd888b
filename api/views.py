"""JSON views of store rows for the inspection and admin routes (one schema per role).

Routes call these inside the database session that loaded the rows. Timestamps are ISO 8601 UTC.
Views deliberately leave out what a client must never see (R14): adapter paths and manifest
hashes; stored error texts go through ``api.errors.sanitize``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from api.errors import sanitize
from store.models import Adapter, Attempt, Episode, TrainingRun


def iso(stamp: datetime | None) -> str | None:
    return stamp.isoformat() if stamp is not None else None


def episode_summary(episode: Episode) -> dict[str, Any]:
    """An episode without its request and attempts (the listing)."""
    return {
        "id": episode.id,
        "object": "episode",
        "created_at": iso(episode.created_at),
        "status": episode.status,
        "served_status": episode.served_status,
        "task": episode.task,
        "model": episode.model,
        "adapter": episode.adapter,
        "client_key_id": episode.client_key_id,
        "latency_ms": episode.latency_ms,
        "prompt_tokens": episode.prompt_tokens,
        "completion_tokens": episode.completion_tokens,
        "error": sanitize(episode.error) if episode.error else None,
        "feedback": None
        if episode.feedback_ok is None
        else {
            "ok": episode.feedback_ok,
            "reason": episode.feedback_reason,
            "at": iso(episode.feedback_at),
            "expected_tool_calls": episode.feedback_expected_calls,
        },
        "trainable": episode.trainable,
        "purpose": episode.purpose,
        "consumed_by_run": episode.consumed_by_run,
        "failure_code": episode.failure_code,
    }


def attempt_view(attempt: Attempt) -> dict[str, Any]:
    return {
        "index": attempt.index,
        "kind": attempt.kind,
        "text": attempt.text,
        "tool_calls": attempt.tool_calls,
        "finish_reason": attempt.finish_reason,
        "verdict": None
        if attempt.ok is None
        else {
            "ok": attempt.ok,
            "reason": attempt.reason,
            "code": attempt.code,
            "path": attempt.path,
            "details": attempt.details,
        },
        "prompt_tokens": attempt.prompt_tokens,
        "completion_tokens": attempt.completion_tokens,
        "latency_ms": attempt.latency_ms,
        "model": attempt.model,
        "adapter": attempt.adapter,
    }


def episode_detail(episode: Episode) -> dict[str, Any]:
    """The whole episode: request, verifier, attempts with verdicts, and the reflections' text."""
    attempts = [attempt_view(a) for a in episode.attempts]
    return {
        **episode_summary(episode),
        "request": {
            "messages": episode.request_messages,
            "tools": episode.request_tools,
            "tool_choice": episode.tool_choice,
        },
        "verifier": episode.verifier,
        "expected_tool_calls": episode.expected_calls,
        "attempts": attempts,
        "reflections": [a["text"] for a in attempts if a["kind"] == "reflection"],
        "verdicts": [{"index": a["index"], "kind": a["kind"], **a["verdict"]} for a in attempts if a["verdict"]],
    }


def adapter_view(adapter: Adapter) -> dict[str, Any]:
    return {
        "object": "adapter",
        "name": adapter.name,
        "version": adapter.version,
        "status": adapter.status,
        "base_model": adapter.base_model,
        "run_id": adapter.run_id,
        "metrics": adapter.metrics,
        "warm_start_from": adapter.warm_start_from,
        "created_at": iso(adapter.created_at),
        "activated_at": iso(adapter.activated_at),
    }


def run_view(run: TrainingRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "object": "training_run",
        "status": run.status,
        "config": run.config,
        "dataset_size": run.dataset_size,
        "metrics": run.metrics,
        "gate_result": run.gate_result,
        "error": sanitize(run.error) if run.error else None,
        "adapter_name": run.adapter_name,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "heartbeat_at": iso(run.heartbeat_at),
        "warm_start_from": run.warm_start_from,
        "resumed_from": run.resumed_from,
        "resumed_from_step": run.resumed_from_step,
    }
