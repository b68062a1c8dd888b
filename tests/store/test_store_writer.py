"""The episode writer: concurrency (R5), DB outages and the spool (R6, R7), hostile values (R8)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from store import repos
from store.db import make_engine, make_session_factory
from store.models import Attempt, Episode
from store.records import EpisodeRecord
from store.writer import EpisodeWriter, SpoolInUse
from tests.store.helpers import make_record
from tests.store.tcp_forwarder import TCPForwarder


def db_counts(url: str) -> tuple[int, int, int]:
    """(episodes, distinct episode ids, attempts) as stored."""
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            episodes = s.execute(select(func.count()).select_from(Episode)).scalar_one()
            distinct = s.execute(select(func.count(func.distinct(Episode.id)))).scalar_one()
            attempts = s.execute(select(func.count()).select_from(Attempt)).scalar_one()
        return int(episodes), int(distinct), int(attempts)
    finally:
        engine.dispose()


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_concurrent_submitters_lose_and_duplicate_nothing(migrated_url: str, tmp_path: Path) -> None:
    """R5: 8 threads x 500 episodes (2-3 attempts each) while a reader lists and counts."""
    engine = make_engine(migrated_url)
    writer = EpisodeWriter(engine, tmp_path / "spool.jsonl")
    per_thread, threads_n = 500, 8
    records = [[make_record(attempts=2 + (i + t) % 2, minutes=i) for i in range(per_thread)] for t in range(threads_n)]
    expected_attempts = sum(len(r.attempts) for batch in records for r in batch)
    accepted: list[bool] = []
    reader_errors: list[BaseException] = []
    done = threading.Event()

    def submit_all(batch: list[EpisodeRecord]) -> None:
        accepted.extend(writer.submit(r) for r in batch)

    def read_while_writing() -> None:
        factory = make_session_factory(engine)
        try:
            while not done.is_set():
                with factory() as s:
                    repos.list_episodes(s, limit=20, status="first_ok")
                    repos.episode_stats(s)
                time.sleep(0.01)
        except BaseException as e:
            reader_errors.append(e)

    reader = threading.Thread(target=read_while_writing)
    reader.start()
    threads = [threading.Thread(target=submit_all, args=(batch,)) for batch in records]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert writer.close(timeout=60)
    done.set()
    reader.join()
    engine.dispose()
    stats = writer.stats()
    assert accepted.count(True) == per_thread * threads_n
    assert reader_errors == []
    assert stats["written"] == 4000 and stats["queued"] == 4000
    assert stats["spooled"] == stats["dropped"] == 0 and stats["degraded"] is False
    assert db_counts(migrated_url) == (4000, 4000, expected_attempts)


@dataclass
class Outage:
    writer_url: str
    down: Callable[[], None]
    up: Callable[[], None]


@pytest.fixture
def outage(migrated_url: str, tmp_path: Path) -> Iterator[Outage]:
    """A URL for the writer whose database can be made unreachable and brought back."""
    url = make_url(migrated_url)
    if url.get_backend_name() == "sqlite":
        db_dir = Path(str(url.database)).parent
        away = db_dir.with_name("db-away")
        yield Outage(migrated_url, lambda: db_dir.rename(away), lambda: away.rename(db_dir))
        return
    forwarder = TCPForwarder(url.host or "127.0.0.1", url.port or 5432)
    forwarder.start()
    try:
        yield Outage(
            url.set(host="127.0.0.1", port=forwarder.port).render_as_string(hide_password=False),
            forwarder.stop,
            forwarder.start,
        )
    finally:
        forwarder.stop()


def test_outage_spools_then_replays_exactly_once(migrated_url: str, outage: Outage, tmp_path: Path) -> None:
    """R6: the DB goes away mid-stream and comes back; nothing is lost or duplicated."""
    spool = tmp_path / "spool.jsonl"
    engine = make_engine(outage.writer_url)
    writer = EpisodeWriter(engine, spool, batch_size=50, retry_interval_s=0.1)
    before = [make_record(attempts=2) for _ in range(120)]
    racing = [make_record(attempts=2) for _ in range(60)]  # in flight when the database goes away
    during = [make_record(attempts=3) for _ in range(300)]
    after = [make_record(attempts=1) for _ in range(80)]
    for r in before:
        assert writer.submit(r)
    assert writer.flush(20)
    assert writer.stats()["written"] == 120

    for r in racing:
        assert writer.submit(r)
    outage.down()
    for i, r in enumerate(during):
        assert writer.submit(r)
        if i == 150:
            assert writer.flush(20)
            assert writer.stats()["degraded"] is True
    assert writer.flush(20)
    mid = writer.stats()
    assert mid["degraded"] is True and mid["spooled"] >= 300 and mid["replayed"] == 0
    assert mid["written"] + mid["spooled"] == 480
    lines = spool.read_text().splitlines()
    assert len(lines) == mid["spooled"]
    assert [json.loads(line)["id"] for line in lines] == [r.id for r in racing + during][-len(lines) :]
    time.sleep(0.3)  # several failed retries while down
    assert writer.stats()["degraded"] is True

    outage.up()
    wait_for(lambda: not writer.stats()["degraded"])
    for r in after:
        assert writer.submit(r)
    assert writer.close(timeout=30)
    engine.dispose()

    stats = writer.stats()
    assert stats["spooled"] > 0 and stats["replayed"] == stats["spooled"]
    assert stats["written"] + stats["replayed"] == stats["queued"] == 560
    assert stats["dropped"] == 0 and stats["degraded"] is False
    assert spool.stat().st_size == 0
    assert db_counts(migrated_url) == (560, 560, 180 * 2 + 300 * 3 + 80)


def test_spool_from_previous_process_is_replayed_at_start(migrated_url: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    old = [make_record(attempts=2, minutes=i) for i in range(30)]
    already = old[0]
    engine = make_engine(migrated_url)
    with make_session_factory(engine).begin() as s:
        repos.record_episodes(s, [already])  # was stored before the crash, and is in the spool too
    with open(spool, "w") as f:
        for r in old:
            f.write(json.dumps(r.to_json()) + "\n")
        f.write(json.dumps(make_record().to_json())[:57])  # torn: the crash hit mid-line
    writer = EpisodeWriter(engine, spool, retry_interval_s=0.1)
    assert writer.stats()["degraded"] is True  # until the leftover spool is replayed
    fresh = make_record()
    assert writer.submit(fresh)
    wait_for(lambda: not writer.stats()["degraded"])
    assert writer.close(10)
    engine.dispose()
    stats = writer.stats()
    assert stats["replayed"] == 30 and stats["spool_skipped"] == 1 and stats["dropped"] == 0
    assert spool.stat().st_size == 0
    assert db_counts(migrated_url) == (31, 31, 61)


def test_appends_after_a_torn_line_stay_readable(tmp_path: Path) -> None:
    """A previous process crashed mid-append (one writer per journal holds a flock, so only a dead one
    can leave a torn line): this writer's records go on lines of their own after it."""
    spool = tmp_path / "spool.jsonl"
    spool.write_text('{"id": "torn", "sta')
    dead = make_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    writer = EpisodeWriter(dead, spool, retry_interval_s=60)
    first, second = make_record(), make_record()
    writer.submit(first)
    assert writer.flush(10)
    writer.submit(second)
    assert writer.close(10)
    lines = spool.read_text().splitlines()
    assert [lines[0], json.loads(lines[1])["id"], json.loads(lines[2])["id"]] == [
        '{"id": "torn", "sta',
        first.id,
        second.id,
    ]


def test_unwritable_spool_drops_and_counts(tmp_path: Path) -> None:
    """R7: DB down and the spool cannot be written: records are dropped and counted, no exception."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    dead = make_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    writer = EpisodeWriter(dead, blocker / "spool.jsonl", retry_interval_s=0.05)
    for _ in range(25):
        assert writer.submit(make_record())
    assert writer.flush(10)
    stats = writer.stats()
    assert stats["dropped"] == 25 and stats["spooled"] == 0 and stats["written"] == 0
    assert stats["degraded"] is True
    assert writer.close(5)


def test_full_queue_overflows_to_the_journal_without_blocking(migrated_url: str, tmp_path: Path) -> None:
    """R7: past ``max_queue`` records in memory the rest wait on disk only; none is dropped, and the
    writer reads them back from the journal."""
    engine = make_engine(migrated_url)
    spool = tmp_path / "spool.jsonl"
    writer = EpisodeWriter(engine, spool, max_queue=5, start=False)  # nothing takes records off the queue yet
    records = [make_record(attempts=2) for _ in range(40)]
    started = time.monotonic()
    results = []
    for r in records:
        results.append(writer.submit(r))
        time.sleep(0.002)  # let the journal keep up, as a disk does between requests
    assert time.monotonic() - started < 5
    assert results == [True] * 40
    wait_for(lambda: len(spool.read_text().splitlines()) == 40)
    stats = writer.stats()
    assert stats["dropped"] == 0 and stats["overflowed"] == 35 and stats["queue_depth"] == 40
    writer.start()
    assert writer.close(20)
    engine.dispose()
    stats = writer.stats()
    assert stats["written"] == 40 and stats["dropped"] == 0 and stats["queued"] == 40
    assert db_counts(migrated_url) == (40, 40, 80)
    assert spool.stat().st_size == 0


def test_submit_durable_resolves_once_the_record_is_on_disk(tmp_path: Path) -> None:
    """R5: the future the chat route awaits is True only once the record is in the fsync'd journal;
    concurrent submitters share fsyncs (group commit)."""
    dead = make_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    spool = tmp_path / "spool.jsonl"
    writer = EpisodeWriter(dead, spool, start=False)
    records = [make_record() for _ in range(64)]
    fsyncs: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    os.fsync = counting_fsync
    try:
        with ThreadPoolExecutor(16) as pool:
            futures = list(pool.map(writer.submit_durable, records))
        assert all(f.result(10) for f in futures)
    finally:
        os.fsync = real_fsync
    on_disk = [json.loads(line)["id"] for line in spool.read_text().splitlines()]
    assert sorted(on_disk) == sorted(r.id for r in records)
    assert 1 <= len(fsyncs) < 64  # records that arrive during one fsync share the next
    writer.start()  # the database is down: the records stay in the journal for the next process
    assert writer.close(5)
    assert len(spool.read_text().splitlines()) == 64


def test_the_journal_is_never_cut_past_a_record_not_stored(migrated_url: str, tmp_path: Path) -> None:
    """R5: while records are appended and stored concurrently (and the journal is cut and rewritten
    all the time), every record whose future said durable is in the journal or in the database at
    any moment — what a crash at that moment would leave."""
    engine = make_engine(migrated_url)
    spool = tmp_path / "spool.jsonl"
    writer = EpisodeWriter(engine, spool, batch_size=20, flush_interval_s=0.01, compact_bytes=2048)
    durable: list[str] = []
    done = threading.Event()

    def submit_all() -> None:
        for _ in range(150):
            record = make_record(attempts=2)
            if writer.submit_durable(record).result(10):
                durable.append(record.id)

    def stored_ids() -> set[str]:
        with Session(engine) as s:
            return set(s.execute(select(Episode.id)).scalars())

    threads = [threading.Thread(target=submit_all) for _ in range(4)]
    for t in threads:
        t.start()
    checks = 0
    try:
        while any(t.is_alive() for t in threads) or checks < 3:
            snapshot = list(durable)
            journal = {json.loads(line)["id"] for line in spool.read_bytes().splitlines() if line.strip()}
            missing = set(snapshot) - journal - stored_ids()  # journal first: a record leaves it only once stored
            assert not missing, f"{len(missing)} durable records neither in the journal nor stored"
            checks += 1
            time.sleep(0.01)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert writer.close(30)
    assert len(durable) == 600 and stored_ids() == set(durable)
    engine.dispose()
    assert spool.stat().st_size == 0


def test_invalid_record_is_dropped_alone(migrated_url: str, tmp_path: Path) -> None:
    engine = make_engine(migrated_url)
    writer = EpisodeWriter(engine, tmp_path / "spool.jsonl", flush_interval_s=0.2)
    good = [make_record() for _ in range(9)]
    for r in [*good[:4], make_record(status="splendid"), *good[4:]]:
        writer.submit(r)
    assert writer.close(10)
    engine.dispose()
    stats = writer.stats()
    assert (stats["written"], stats["invalid"], stats["dropped"], stats["spooled"]) == (9, 1, 1, 0)
    assert db_counts(migrated_url)[0] == 9
    assert (tmp_path / "spool.jsonl").stat().st_size == 0  # nothing was ever spooled


def test_one_writer_per_spool(tmp_path: Path) -> None:
    dead = make_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    first = EpisodeWriter(dead, tmp_path / "spool.jsonl")
    with pytest.raises(SpoolInUse):
        EpisodeWriter(dead, tmp_path / "spool.jsonl")
    assert first.close(5)
    EpisodeWriter(dead, tmp_path / "spool.jsonl").close(5)
