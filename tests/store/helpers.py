"""Helpers shared by the store tests: an episode factory (test databases: tests/support/db.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from store.records import AttemptRecord, EpisodeRecord

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def make_record(
    *,
    status: str = "first_ok",
    attempts: int = 1,
    tools: tuple[str, ...] = ("get_weather",),
    called: str | None = None,
    adapter: str | None = None,
    task: str | None = None,
    created_at: datetime | None = None,
    minutes: float = 0,
    episode_id: str | None = None,
) -> EpisodeRecord:
    """An episode offering ``tools``; every answer/retry attempt calls ``called`` (default: the first tool)."""
    name = called or tools[0]
    kinds = ["answer", "reflection", "retry"]
    rec = EpisodeRecord(
        status=status,
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[{"type": "function", "function": {"name": t, "parameters": {"type": "object"}}} for t in tools],
        tool_choice="auto",
        verifier={"kind": "schema"},
        task=task,
        adapter=adapter,
        model=adapter or "base",
        created_at=created_at or T0 + timedelta(minutes=minutes),
        latency_ms=12,
        attempts=[
            AttemptRecord(
                kind=kinds[i % 3],
                text="thinking" if kinds[i % 3] == "reflection" else None,
                tool_calls=None
                if kinds[i % 3] == "reflection"
                else [{"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": "{}"}}],
                ok=None if kinds[i % 3] == "reflection" else status != "failed",
                prompt_tokens=10,
                completion_tokens=5,
            )
            for i in range(attempts)
        ],
    )
    if episode_id is not None:
        rec.id = episode_id
    return rec
