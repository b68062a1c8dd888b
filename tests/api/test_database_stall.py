"""R6 when the database stalls instead of refusing: PostgreSQL behind a forwarder that stops passing bytes.

A refused or reset connection fails at once; a stalled one (connections open, no bytes, new
connections accepted) fails only where rrr bounds its wait. ``rrr serve`` runs against PostgreSQL
through ``tests.store.tcp_forwarder.TCPForwarder``; clients keep sending chat requests while the
forwarder is blackholed for a few seconds, then it resumes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from store.db import make_engine
from store.models import Attempt, Episode
from tests.api.conftest import ADMIN, GOOD, INFER, MESSAGES, TOOLS, Rrr, running
from tests.store.tcp_forwarder import TCPForwarder
from tests.support.db import PG_ENV, migrated_database
from tests.support.upstream import Script

pytestmark = [
    pytest.mark.pg,
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get(PG_ENV), reason=f"needs {PG_ENV}"),
]

OUTAGE_S = 4.0  # how long the forwarder passes no bytes (at least; see the probe below)
CLIENTS = 3  # threads sending chat requests back to back during the outage
ANSWER_BOUND_S = 2.0  # a chat request answered in more than this waited on the database
DEGRADED_WITHIN_S = 4.0  # /health says `degraded` this soon after the stall starts
INSPECTION_BOUND_S = 10.0  # an admin route that needs the database fails (503) within this
RECOVERY_S = 30.0  # after the resume: the spool replayed and /health `ok` again
CLIENT_TIMEOUT_S = 5.0  # so that a hung request is recorded, not waited for


@dataclass
class Observed:
    """What the clients saw during the outage (printed with every failed assertion)."""

    chats: list[tuple[float, int, str | None]] = field(default_factory=list)  # (latency, status, episode id)
    errors: list[str] = field(default_factory=list)
    health: list[tuple[float, str]] = field(default_factory=list)  # (seconds into the outage, status)
    probes: dict[str, tuple[float, int | str]] = field(default_factory=dict)  # path -> (latency, status)

    def summary(self) -> dict[str, Any]:
        latencies = sorted(latency for latency, _, _ in self.chats)
        degraded = [t for t, status in self.health if status == "degraded"]
        return {
            "answered": sum(1 for _, status, _ in self.chats if status == 200),
            "other_statuses": sorted({status for _, status, _ in self.chats if status != 200}),
            "client_errors": len(self.errors),
            "first_errors": self.errors[:3],
            "max_latency_s": round(latencies[-1], 3) if latencies else None,
            "median_latency_s": round(latencies[len(latencies) // 2], 3) if latencies else None,
            "health_seen": sorted({status for _, status in self.health}),
            "first_degraded_s": round(degraded[0], 2) if degraded else None,
            "probes": {path: (round(t, 2), status) for path, (t, status) in self.probes.items()},
        }


def _chat(http: httpx.Client) -> tuple[float, int, str | None]:
    started = time.monotonic()
    response = http.post("/v1/chat/completions", json={"model": "rrr", "messages": MESSAGES, "tools": TOOLS})
    return time.monotonic() - started, response.status_code, response.headers.get("x-rrr-episode-id")


def _health(rrr: Rrr) -> str:
    with httpx.Client(base_url=rrr.url, timeout=CLIENT_TIMEOUT_S) as http:
        return str(http.get("/health").json()["status"])


@pytest.fixture
def stalling_db(tmp_path: Path) -> Iterator[tuple[str, str, TCPForwarder]]:
    """(direct URL, URL through the forwarder, the forwarder) for a fresh migrated PostgreSQL database."""
    with migrated_database("postgresql", tmp_path) as direct:
        url = make_url(direct)
        forwarder = TCPForwarder(url.host or "127.0.0.1", url.port or 5432)
        forwarder.start()
        through = url.set(host="127.0.0.1", port=forwarder.port).render_as_string(hide_password=False)
        try:
            yield direct, through, forwarder
        finally:
            forwarder.resume()
            forwarder.stop()


def _stored(direct_url: str, ids: list[str]) -> tuple[int, int]:
    """(episodes, attempts) stored for ``ids``, read past the forwarder."""
    engine = make_engine(direct_url, poolclass=NullPool)
    try:
        with Session(engine) as s:
            episodes = s.execute(select(func.count()).select_from(Episode).where(Episode.id.in_(ids))).scalar_one()
            attempts = s.execute(select(func.count()).select_from(Attempt).where(Attempt.episode_id.in_(ids)))
            return int(episodes), int(attempts.scalar_one())
    finally:
        engine.dispose()


def _during_outage(rrr: Rrr, seen: Observed, started: float) -> None:
    """Chat load, a /health poller and one inspection probe, until OUTAGE_S is over and the probe is done."""
    stop = threading.Event()

    def load() -> None:
        headers = {"Authorization": f"Bearer {INFER}"}
        with httpx.Client(base_url=rrr.url, headers=headers, timeout=CLIENT_TIMEOUT_S) as http:
            while not stop.is_set():
                try:
                    seen.chats.append(_chat(http))
                except httpx.HTTPError as exc:
                    seen.errors.append(f"{type(exc).__name__} after {time.monotonic() - started:.1f}s")

    def poll_health() -> None:
        while not stop.is_set():
            try:
                seen.health.append((time.monotonic() - started, _health(rrr)))
            except httpx.HTTPError as exc:
                seen.health.append((time.monotonic() - started, type(exc).__name__))
            stop.wait(0.2)

    def probe() -> None:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=rrr.url, headers=headers, timeout=INSPECTION_BOUND_S + 2) as http:
            for path in ("/v1/models", "/v1/stats"):
                t0 = time.monotonic()
                try:
                    status: int | str = http.get(path).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                seen.probes[path] = (time.monotonic() - t0, status)

    workers = [threading.Thread(target=load) for _ in range(CLIENTS)] + [threading.Thread(target=poll_health)]
    prober = threading.Thread(target=probe)
    for thread in [*workers, prober]:
        thread.start()
    time.sleep(OUTAGE_S)
    prober.join()  # the stall lasts until the probe has its answer, so that it is an answer during the stall
    stop.set()
    for thread in workers:
        thread.join()


def test_a_stalled_database_never_stops_serving_and_every_answer_is_stored(
    stalling_db: tuple[str, str, TCPForwarder], tmp_path: Path
) -> None:
    """R6: with PostgreSQL blackholed, chat requests are answered at normal latency, /health says
    `degraded` within seconds and inspection fails fast; after the resume the spool is replayed (every
    answered episode stored once) and /health is `ok` again."""
    direct, through, forwarder = stalling_db
    bounds = dict(db_connect_timeout_s=2, db_statement_timeout_s=1, db_pool_timeout_s=1, db_write_timeout_s=1)
    with running(tmp_path, Script(answer=[GOOD]), database_url=through, auto_migrate=False, **bounds) as rrr:
        before = [rrr.chat() for _ in range(3)]
        assert [r.status_code for r in before] == [200, 200, 200]
        rrr.flush()
        assert _health(rrr) == "ok"

        seen = Observed()
        forwarder.blackhole()
        started = time.monotonic()
        try:
            _during_outage(rrr, seen, started)
        finally:
            forwarder.resume()
        outage_s = time.monotonic() - started
        summary = {"outage_s": round(outage_s, 1), **seen.summary()}
        why = str(summary)

        assert not seen.errors, why
        assert seen.chats and all(status == 200 for _, status, _ in seen.chats), why
        assert max(latency for latency, _, _ in seen.chats) < ANSWER_BOUND_S, why
        assert summary["first_degraded_s"] is not None and summary["first_degraded_s"] < DEGRADED_WITHIN_S, why
        assert "down" not in summary["health_seen"], why  # the engine answers: serving goes on
        models_s, models_status = seen.probes["/v1/models"]
        assert models_status == 200 and models_s < ANSWER_BOUND_S, why  # the last known policy
        stats_s, stats_status = seen.probes["/v1/stats"]
        assert stats_status == 503 and stats_s < INSPECTION_BOUND_S, why

        deadline = time.monotonic() + RECOVERY_S
        while _health(rrr) != "ok":
            assert time.monotonic() < deadline, ("health not ok again after the resume", rrr.state.writer.stats())
            time.sleep(0.1)
        rrr.flush()
        stats = rrr.state.writer.stats()
        ids = [r.headers["x-rrr-episode-id"] for r in before] + [i for _, status, i in seen.chats if i]
        assert len(set(ids)) == len(ids) == summary["answered"] + 3
        assert stats["spooled"] > 0 and stats["replayed"] == stats["spooled"] and stats["dropped"] == 0, stats
        assert _stored(direct, ids) == (len(ids), len(ids)), stats  # one episode, one attempt each; none lost
