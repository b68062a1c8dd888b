"""R5/R6: no answered episode is lost — not to a kill -9 of `rrr serve`, nor to its data dir vanishing.

The kill -9 test runs a real `rrr serve` child process in front of the scripted upstream, fires a burst
of concurrent chat requests, SIGKILLs the server mid-burst, restarts it on the same database and
journal, and compares every episode id a client received (`x-rrr-episode-id`) with the stored ones,
on SQLite and PostgreSQL. The vanished-dir test moves the default data dir (database and journal
inside it) away during a burst: an outage, never a new empty database at the old path.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from store.db import make_engine, upgrade
from store.models import Episode
from tests.api.conftest import GOOD, INFER, MESSAGES, TOOLS, running
from tests.support.db import backends, create_pg_database
from tests.support.upstream import Script, ScriptedUpstream, free_port

ROOT = Path(__file__).resolve().parents[2]
BODY = {"model": "rrr", "messages": MESSAGES, "tools": TOOLS}


class Burst:
    """``clients`` threads sending chat requests back to back until stopped or refused; every episode id
    an answer carried is kept."""

    def __init__(self, url: str, clients: int = 12) -> None:
        self.url = url
        self.answered: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        headers = {"Authorization": f"Bearer {INFER}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as http:
            while not self.stop.is_set():
                try:
                    response = http.post("/v1/chat/completions", json=BODY)
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 200:
                    self.answered.append(response.headers["x-rrr-episode-id"])

    def __enter__(self) -> Burst:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def wait_for(self, n: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.answered) < n:
            assert time.monotonic() < deadline, f"only {len(self.answered)} answers"
            time.sleep(0.01)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _stored_ids(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            return set(s.execute(select(Episode.id)).scalars())
    finally:
        engine.dispose()


@pytest.fixture(params=backends())
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    """(URL to read the episodes from, URL to give `rrr serve`: None for its embedded SQLite default)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'rrr.db'}", None
        return
    url, drop = create_pg_database()
    try:
        upgrade(url)
        yield url, url
    finally:
        drop()


@contextmanager
def rrr_serve(
    upstream_url: str, port: int, data_dir: Path, database_url: str | None
) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RRR_API_KEYS": INFER, "RRR_BASE_MODEL_NAME": "base"}
    env.pop("RRR_CONFIG", None)
    env.pop("RRR_DATABASE_URL", None)
    args = ["serve", "--engine-url", upstream_url, "--port", str(port), "--data-dir", str(data_dir)]
    if database_url is not None:
        args += ["--database-url", database_url]
    process = subprocess.Popen(
        [sys.executable, "-c", "import cli; cli.main()", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith(f"rrr serving on http://127.0.0.1:{port}"), line
        threading.Thread(target=process.stdout.read, daemon=True).start()  # keep the pipe drained
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(15)


@pytest.mark.slow
def test_kill_9_mid_burst_loses_no_answered_episode(tmp_path: Path, database: tuple[str, str | None]) -> None:
    read_url, serve_url = database
    data_dir = tmp_path / "data"
    port = free_port()
    with ScriptedUpstream(Script(answer=[GOOD])) as upstream:
        with rrr_serve(upstream.url, port, data_dir, serve_url) as first, Burst(f"http://127.0.0.1:{port}") as burst:
            burst.wait_for(300)
            first.send_signal(signal.SIGKILL)  # no shutdown, no flush: only the journal remains
            first.wait(10)
        answered = set(burst.answered)
        assert len(answered) == len(burst.answered) >= 300
        with rrr_serve(upstream.url, port, data_dir, serve_url):  # same port: same journal, replayed at start
            deadline = time.monotonic() + 30
            while not answered <= _stored_ids(read_url) and time.monotonic() < deadline:
                time.sleep(0.1)  # the restarted writer replays the journal
    missing = answered - _stored_ids(read_url)
    assert not missing, f"{len(missing)} of {len(answered)} answered episodes were lost"


def test_a_vanished_data_dir_is_an_outage_never_a_new_database(tmp_path: Path) -> None:
    """The default layout (database and journal under the data dir): moving the dir away mid-burst is
    `degraded`, creates nothing at the old path, and once it is back every answered episode is stored."""
    data = tmp_path / "data"
    away = tmp_path / "data-away"
    with running(data, Script(answer=[GOOD])) as rrr:
        health = rrr.http(None)
        with Burst(rrr.url, clients=6) as burst:
            burst.wait_for(40)
            data.rename(away)
            moved_at = len(burst.answered)
            _wait(lambda: health.get("/health").json()["status"] == "degraded", 15, "not degraded after the move")
            burst.wait_for(moved_at + 100)  # serving goes on during the outage
            assert not data.exists(), "something re-created the data dir at the old path"
            away.rename(data)
            burst.wait_for(len(burst.answered) + 40)
        _wait(lambda: health.get("/health").json()["status"] == "ok", 30, "not ok after the dir came back")
        rrr.flush()
        stats = rrr.state.writer.stats()
        assert stats["spooled"] > 0 and stats["dropped"] == 0, stats
        with sqlite3.connect(data / "rrr.db") as db:
            stored = {row[0] for row in db.execute("SELECT id FROM episodes")}
    answered = set(burst.answered)
    assert len(answered) > moved_at + 100
    missing = answered - stored
    assert not missing, f"{len(missing)} of {len(answered)} answered episodes were lost"
    assert not away.exists()
