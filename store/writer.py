"""The episode writer: takes records off the request path and stores them in batches (R5-R7).

The API creates one ``EpisodeWriter`` per process, calls ``submit`` after each request and
``close`` on shutdown (R4). ``submit`` never blocks: records go into a bounded queue (full →
dropped and counted). One background thread drains the queue in batches, one transaction per batch
through ``repos.record_episodes`` (idempotent on the episode id), so concurrent requests never
contend for SQLite's write lock.

When the database is unreachable the batch is appended to an append-only JSON-lines spool file
(fsync'd per batch) and the writer is ``degraded``: every later batch goes to the spool too, so
order is kept, and every ``retry_interval_s`` the spool is replayed in order. Once a replay has
committed every line the spool is truncated and direct writes resume. A spool left by a previous
process is replayed first; a torn line (crash mid-append) is skipped. When the spool cannot be
written either (disk full), the batch is dropped and counted (R7). A record the database rejects as
data (constraint, bad value) is isolated by retrying the batch one record at a time and dropped
alone; it never blocks the others. This module never raises into the caller.

Every database call of the writer (a batch, a replayed batch, a probe) runs on a second daemon
thread and is waited for at most ``write_timeout_s``. A call past that bound counts as an outage
(a stalled database: connections open, no answer): the writer is ``degraded`` and spools the batch.
The late call is left to end by itself (the engine's own bounds close a stalled connection) and no
other call starts before it has; if it commits after all, replaying the spooled copy stores nothing
twice (the inserts are idempotent), so nothing is lost or duplicated either way.

One writer per spool file: the writer holds an exclusive ``flock`` on it while open, and a second
writer on the same path fails at construction (``SpoolInUse``); give each process its own path
(e.g. one per worker index, so a restarted worker replays what its predecessor left).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from store.db import make_session_factory
from store.episodes import record_episodes
from store.records import EpisodeRecord

log = logging.getLogger(__name__)
T = TypeVar("T")

_OUTAGE_ERRORS = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.ProgrammingError,  # e.g. schema missing: a deployment fault, not a bad record
    sa_exc.InternalError,
    sa_exc.TimeoutError,
    sa_exc.DisconnectionError,
    OSError,
)


class SpoolInUse(RuntimeError):
    """Another live writer holds this spool file; two writers would truncate each other's records."""


class _Outage(Exception):
    """The database could not be reached or used (as opposed to rejecting one record)."""


def _is_outage(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, _OUTAGE_ERRORS)


class _Calls:
    """Runs calls on a daemon thread of its own and waits at most ``timeout_s`` for each (None: no bound).

    A call past its bound raises ``_Outage`` in the caller and goes on in the background; until it has
    returned, every new call is an ``_Outage`` at once, so stalled calls never pile up.
    """

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = queue.SimpleQueue()
        self._late: Future[Any] | None = None
        self._thread: threading.Thread | None = None

    def run(self, work: Callable[[], T]) -> T:
        if self.timeout_s is None:
            return work()
        if self._late is not None:
            if not self._late.done():
                raise _Outage(f"an earlier database call has not returned after {self.timeout_s:g}s")
            log.info("the late database call has returned")
            self._late = None
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="rrr-episode-writer-db", daemon=True)
            self._thread.start()
        future: Future[Any] = Future()
        self._jobs.put((work, future))
        try:
            result: T = future.result(self.timeout_s)
        except FutureTimeout:
            self._late = future
            raise _Outage(f"a database call did not return within {self.timeout_s:g}s") from None
        return result

    def stop(self) -> None:
        """End the thread once it is idle (a late call still running ends it when it returns)."""
        if self._thread is not None:
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            work, future = job
            try:
                future.set_result(work())
            except BaseException as exc:  # handed to the caller, or to nobody if it gave up waiting
                future.set_exception(exc)


class EpisodeWriter:
    """Batched, spooling writer of ``EpisodeRecord``s. Thread-safe; see the module docstring."""

    def __init__(
        self,
        target: Engine | sessionmaker[Session],
        spool_path: str | os.PathLike[str],
        *,
        max_queue: int = 10_000,
        batch_size: int = 200,
        flush_interval_s: float = 0.05,
        retry_interval_s: float = 2.0,
        write_timeout_s: float | None = 5.0,
        start: bool = True,
    ) -> None:
        self._factory = target if isinstance(target, sessionmaker) else make_session_factory(target)
        self._spool = Path(spool_path)
        self._batch_size = max(1, batch_size)
        self._flush_interval_s = max(0.0, flush_interval_s)
        self._retry_interval_s = max(0.01, retry_interval_s)
        self._calls = _Calls(write_timeout_s if write_timeout_s and write_timeout_s > 0 else None)
        self._queue: queue.Queue[EpisodeRecord] = queue.Queue(maxsize=max(1, max_queue))
        self._lock = threading.Lock()
        self._handled_cond = threading.Condition(self._lock)
        self._counts = dict.fromkeys(
            ("queued", "written", "spooled", "replayed", "dropped", "invalid", "spool_skipped"), 0
        )
        self._handled = 0  # accepted records that are written, spooled or dropped
        self._closed = False
        self._stop = threading.Event()
        self._replay_offset = 0
        self._next_retry = 0.0
        self._lock_fd = self._lock_spool()
        self._degraded = self._spool_has_data()  # a previous process left records: replay them first
        self._thread = threading.Thread(target=self._run, name="rrr-episode-writer", daemon=True)
        if start:
            self.start()

    # ---- caller side -------------------------------------------------------------------------

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def submit(self, record: EpisodeRecord) -> bool:
        """Queue a record for storage; False (and counted as dropped) if the queue is full or closed."""
        with self._lock:
            if self._closed:
                self._counts["dropped"] += 1
                return False
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self._counts["dropped"] += 1
                return False
            self._counts["queued"] += 1
            return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted so far is written, spooled or dropped; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._handled_cond:
            target = self._counts["queued"]
            while self._handled < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._handled_cond.wait(remaining)
        return True

    def close(self, timeout: float | None = 10.0) -> bool:
        """Refuse new records, flush, and stop the thread. True if everything was handled in time."""
        start = time.monotonic()
        with self._lock:
            self._closed = True
        flushed = self.flush(timeout)
        self._stop.set()
        if self._thread.is_alive():
            remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
            self._thread.join(remaining)
        stopped = not self._thread.is_alive()
        if stopped:
            self._calls.stop()
        if stopped and self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        return flushed and stopped

    def stats(self) -> dict[str, Any]:
        """Counters: queued (accepted), written, spooled, replayed, dropped (incl. invalid),
        invalid, spool_skipped (unreadable spool lines), queue_depth, degraded."""
        with self._lock:
            data: dict[str, Any] = dict(self._counts)
            data["degraded"] = self._degraded
        data["queue_depth"] = self._queue.qsize()
        return data

    @property
    def degraded(self) -> bool:
        return self._degraded

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- writer thread -----------------------------------------------------------------------

    def _count(self, key: str, n: int) -> None:
        with self._lock:
            self._counts[key] += n

    def _run(self) -> None:
        while True:
            try:
                if self._degraded and time.monotonic() >= self._next_retry:
                    self._recover()
                batch = self._take_batch()
                if batch:
                    self._handle(batch)
                elif self._stop.is_set():
                    return
            except Exception:  # the thread must survive anything; records are counted, not lost silently
                log.exception("episode writer loop error")
                time.sleep(0.05)

    def _take_batch(self) -> list[EpisodeRecord]:
        wait = 0.1 if not self._degraded else max(0.0, min(0.1, self._next_retry - time.monotonic()))
        try:
            batch = [self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()]
        except queue.Empty:
            return []
        # Linger once for the whole interval instead of waking on every put: under load a wake-up
        # per record cost the request path a GIL hand-off each (about a tenth of its CPU).
        if self._flush_interval_s > 0 and self._queue.qsize() < self._batch_size - 1:
            self._stop.wait(self._flush_interval_s)
        while len(batch) < self._batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _handle(self, batch: list[EpisodeRecord]) -> None:
        try:
            if not self._degraded:
                try:
                    invalid = self._commit(batch)
                    self._count("written", len(batch) - invalid)
                    return
                except _Outage as exc:
                    log.warning("database unavailable, spooling episodes: %s", exc.__cause__ or exc)
                    with self._lock:
                        self._degraded = True
                    self._next_retry = time.monotonic() + self._retry_interval_s
            self._append_to_spool(batch)
        finally:
            with self._handled_cond:
                self._handled += len(batch)
                self._handled_cond.notify_all()

    def _commit(self, records: Sequence[EpisodeRecord]) -> int:
        """Store records in one transaction; on a data error, one by one. Returns how many were dropped."""
        try:
            self._calls.run(lambda: self._store(records))
            return 0
        except _Outage:
            raise
        except Exception as exc:
            if _is_outage(exc):
                raise _Outage(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
            if len(records) == 1:
                log.error("dropping episode %s rejected by the database: %s", records[0].id, exc)
                self._count("invalid", 1)
                self._count("dropped", 1)
                return 1
        return sum(self._commit([record]) for record in records)

    def _store(self, records: Sequence[EpisodeRecord]) -> None:
        """One transaction (on the calls thread)."""
        with self._factory.begin() as session:
            record_episodes(session, records)

    # ---- spool -------------------------------------------------------------------------------

    def _lock_spool(self) -> int | None:
        try:
            self._spool.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._spool, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # an unwritable spool is counted later, per batch
            log.warning("cannot open the spool %s: %s", self._spool.name, exc)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise SpoolInUse(f"spool {self._spool} is used by another writer") from exc
        return fd

    def _spool_has_data(self) -> bool:
        try:
            return self._spool.stat().st_size > 0
        except OSError:
            return False

    def _append_to_spool(self, batch: list[EpisodeRecord]) -> None:
        lines: list[bytes] = []
        for record in batch:
            try:
                lines.append(json.dumps(record.to_json(), ensure_ascii=True, default=str).encode() + b"\n")
            except (TypeError, ValueError, AttributeError) as exc:
                log.error("dropping episode that cannot be serialised: %s", exc)
                self._count("dropped", 1)
        if not lines:
            return
        position = None
        try:
            self._spool.parent.mkdir(parents=True, exist_ok=True)
            with open(self._spool, "a+b") as spool:
                position = spool.seek(0, os.SEEK_END)
                prefix = b""
                if position > 0:
                    spool.seek(position - 1)
                    if spool.read(1) != b"\n":  # a torn line from a crash: keep ours on lines of their own
                        prefix = b"\n"
                spool.write(prefix + b"".join(lines))
                spool.flush()
                os.fsync(spool.fileno())
            self._count("spooled", len(lines))
        except OSError as exc:
            log.error("spool not writable, dropping %d episodes: %s", len(lines), exc)
            self._count("dropped", len(lines))
            if position is not None:
                with contextlib.suppress(OSError):
                    os.truncate(self._spool, position)

    def _probe(self) -> None:
        def select_one() -> None:
            with self._factory() as session:
                session.execute(text("SELECT 1"))

        try:
            self._calls.run(select_one)
        except _Outage:
            raise
        except Exception as exc:
            raise _Outage(type(exc).__name__) from exc

    def _recover(self) -> None:
        self._next_retry = time.monotonic() + self._retry_interval_s
        try:
            self._replay()
        except _Outage as exc:
            log.debug("database still unavailable: %s", exc)
            return
        except OSError as exc:
            log.error("cannot read the spool %s: %s", self._spool.name, exc)
            return
        with self._lock:
            self._degraded = False
        log.info("database available again; spool replayed")

    def _replay(self) -> None:
        """Store the spool's records in order (one transaction per batch), then truncate it."""
        if not self._spool_has_data():
            self._probe()
            return
        with open(self._spool, "rb") as spool:
            spool.seek(self._replay_offset)
            while True:
                records: list[EpisodeRecord] = []
                while len(records) < self._batch_size:
                    line = spool.readline()
                    if not line:
                        break
                    try:
                        records.append(EpisodeRecord.from_json(json.loads(line)))
                    except (ValueError, TypeError, AttributeError):
                        if line.strip():
                            log.warning("skipping an unreadable spool line (%d bytes)", len(line))
                            self._count("spool_skipped", 1)
                if records:
                    invalid = self._commit(records)
                    self._count("replayed", len(records) - invalid)
                self._replay_offset = spool.tell()
                if not line:
                    break
        with open(self._spool, "r+b") as spool:
            spool.truncate(0)
            spool.flush()
            os.fsync(spool.fileno())
        self._replay_offset = 0
