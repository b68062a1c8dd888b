"""The episode writer: takes records off the request path and stores them in batches (R5-R7).

The API creates one ``EpisodeWriter`` per process, calls ``submit_durable`` for each answered
request (``submit`` for the rest) and ``close`` on shutdown (R4). Neither blocks.

Every accepted record is first appended to a journal: an append-only JSON-lines file (the spool
path), written by a thread of its own in group commits — every record that arrived while the last
``fsync`` ran goes into the next write and shares the next ``fsync``. ``submit_durable`` returns a
future that is resolved once its record is on disk, which the chat route awaits before the answer
leaves (R5: a ``kill -9`` loses no answered episode). A second thread, the writer, moves records from
the journal to SQL in order, in batches, one transaction per batch through
``repos.record_episodes`` (idempotent on the episode id), so concurrent requests never contend for
SQLite's write lock. It takes each record from a bounded memory copy (``max_queue`` records); when
that is full the record is on disk only and the writer reads it back from the journal, so a full
queue drops nothing while the disk takes writes (R7). Whatever the writer has stored is cut off the
front of the journal: the file is truncated when everything in it is stored, or rewritten without
its stored head (a new file renamed over the old one) once that head passes ``compact_bytes``, and
never past a record that is not stored. A journal left by a previous process is replayed first (a
torn last line is skipped).

When the database is unreachable the writer is ``degraded``: the records wait in the journal, which
is the spool, and every ``retry_interval_s`` the writer tries the oldest batch again; once the
journal is caught up it is ``ok``. Every database call of the writer (a batch, a probe) runs on a
second daemon thread and is waited for at most ``write_timeout_s``: a call past that bound counts as
an outage (a stalled database) and is left to end by itself; no other call starts before it has. If
it commits after all, storing the batch again writes nothing twice. A record the database rejects as
data (constraint, bad value) is isolated by retrying the batch one record at a time and dropped
alone.

The journal file is opened once, by its directory's descriptor: if the directory is moved away (with
the database next to it), records go on into the moved file and are replayed into whatever database
comes back; nothing is created at the old path. When the journal cannot be written (disk full), its
records are written from memory, not durable, and dropped and counted when the database is down
too (R7). This module never raises into the caller.

One writer per journal file: the writer holds an exclusive ``flock`` on it while open, and a second
writer on the same path fails at construction (``SpoolInUse``); give each process its own path
(e.g. one per worker index, so a restarted worker replays what its predecessor left).
"""

from __future__ import annotations

import collections
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
from dataclasses import dataclass, field
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


class _Journal:
    """The journal file, opened once through its directory's descriptor (so it follows a moved directory).

    Offsets are logical: they count every byte ever appended by this process's journal (a file left by
    a previous process starts at 0), and ``base`` is the logical offset of the file's first byte, which
    moves forward when the stored head is cut off. ``lock`` orders appends against compaction.
    """

    COMPACT_SUFFIX = ".compact"

    def __init__(self, path: Path) -> None:
        self.name = path.name
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)  # at startup only; never again at runtime
        self.dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.fd = os.open(self.name, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600, dir_fd=self.dir_fd)
        except OSError:
            os.close(self.dir_fd)
            raise
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            os.close(self.dir_fd)
            raise SpoolInUse(f"spool {path} is used by another writer") from exc
        with contextlib.suppress(OSError):  # a compaction cut short by a crash: the journal itself is whole
            os.unlink(self.name + self.COMPACT_SUFFIX, dir_fd=self.dir_fd)
        self.base = 0
        self.end = os.fstat(self.fd).st_size
        if self.end and os.pread(self.fd, 1, self.end - 1) != b"\n":  # a torn line from a crash: end it
            self.append(b"\n")

    def append(self, data: bytes) -> int:
        """Write ``data`` and fsync; returns its logical start. On an error nothing of it is left."""
        with self.lock:
            start = self.end
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view) :]
                os.fsync(self.fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, start - self.base)
                raise
            self.end = start + len(data)
            return start

    def read(self, start: int, limit: int) -> bytes:
        """The bytes from logical ``start`` up to ``limit`` (only the writer thread reads and compacts)."""
        parts: list[bytes] = []
        position = start
        while position < limit:
            chunk = os.pread(self.fd, limit - position, position - self.base)
            if not chunk:
                break
            parts.append(chunk)
            position += len(chunk)
        return b"".join(parts)

    def cut(self, keep_from: int, *, rewrite: bool) -> None:
        """Drop everything before logical ``keep_from`` (all of it stored): truncate when nothing is left,
        else (``rewrite``) write the rest to a new file and rename it over the journal."""
        with self.lock:
            if keep_from <= self.base:
                return
            if keep_from >= self.end:
                os.ftruncate(self.fd, 0)
                self.base = self.end
                return
            if not rewrite:
                return
            tail = self.read(keep_from, self.end)
            tmp = self.name + self.COMPACT_SUFFIX
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600, dir_fd=self.dir_fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                view = memoryview(tail)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                os.rename(tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            except OSError:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=self.dir_fd)
                raise
            with contextlib.suppress(OSError):
                os.fsync(self.dir_fd)
            os.close(self.fd)  # releases the old file's flock; the new one holds its own
            self.fd = fd
            self.base = keep_from

    def size(self) -> int:
        return self.end - self.base

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.dir_fd)


@dataclass
class _Entry:
    """A journaled record: its logical byte range in the journal."""

    start: int
    end: int
    record: EpisodeRecord


@dataclass
class _Batch:
    """Records in journal order from ``start`` to ``end``; ``ends`` per record, ``own`` journaled by
    this process, ``skipped`` unreadable lines passed over."""

    start: int
    end: int
    records: list[EpisodeRecord] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    own: int = 0
    skipped: int = 0


class EpisodeWriter:
    """Journaled, batched writer of ``EpisodeRecord``s. Thread-safe; see the module docstring."""

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
        compact_bytes: int = 4 * 1024 * 1024,
        start: bool = True,
    ) -> None:
        self._factory = target if isinstance(target, sessionmaker) else make_session_factory(target)
        self._spool = Path(spool_path)
        self._max_queue = max(1, max_queue)
        self._batch_size = max(1, batch_size)
        self._flush_interval_s = max(0.0, flush_interval_s)
        self._retry_interval_s = max(0.01, retry_interval_s)
        self._compact_bytes = max(0, compact_bytes)
        self._calls = _Calls(write_timeout_s if write_timeout_s and write_timeout_s > 0 else None)
        self._lock = threading.Lock()
        self._handled_cond = threading.Condition(self._lock)
        self._pending_cond = threading.Condition(self._lock)  # the journal thread waits here
        self._wake = threading.Condition(self._lock)  # the writer thread waits here
        self._counts = dict.fromkeys(
            ("queued", "written", "spooled", "replayed", "dropped", "invalid", "spool_skipped", "overflowed"), 0
        )
        self._pending: list[tuple[EpisodeRecord, Future[bool] | None]] = []  # waiting for the journal
        self._cache: collections.deque[_Entry] = collections.deque()  # journaled, not stored, in order
        self._direct: collections.deque[EpisodeRecord] = collections.deque()  # the journal failed them
        self._closed = False
        self._stop = threading.Event()
        self._journal_stop = False
        self._next_retry = 0.0
        self._journal = self._open_journal()
        size = self._journal.end if self._journal is not None else 0
        self._startup_end = size  # below this offset: records a previous process left
        self._stored = 0  # logical offset: everything before it is stored (or dropped as invalid)
        self._durable = size  # logical offset: everything before it is fsync'd
        self._spooled_mark = size  # records ending at or before it waited for an outage: replayed, not written
        self._own_durable = 0  # records this process journaled
        self._own_passed = 0  # ... of which the writer has stored or dropped
        self._own_spooled = 0  # ... of which are counted as spooled
        self._handled_other = 0  # accepted records handled outside the journal (dropped, or written directly)
        self._degraded = size > 0  # a previous process left records: replay them first
        self._spooling = False  # an outage: records journaled meanwhile count as spooled
        self._journal_thread = threading.Thread(target=self._journal_loop, name="rrr-episode-journal", daemon=True)
        self._journal_thread.start()
        self._thread = threading.Thread(target=self._run, name="rrr-episode-writer", daemon=True)
        if start:
            self.start()

    # ---- caller side -------------------------------------------------------------------------

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def submit(self, record: EpisodeRecord) -> bool:
        """Queue a record for the journal and the database; False (and counted as dropped) if closed or
        if ``max_queue`` records are already waiting for the disk."""
        return self._accept(record, None)

    def submit_durable(self, record: EpisodeRecord) -> Future[bool]:
        """``submit``, and a future that is True once the record is fsync'd to the journal (False: it was
        refused, or the journal could not be written and the record is only in memory)."""
        future: Future[bool] = Future()
        if not self._accept(record, future):
            future.set_result(False)
        return future

    def _accept(self, record: EpisodeRecord, future: Future[bool] | None) -> bool:
        with self._lock:
            if self._closed or len(self._pending) >= self._max_queue:
                self._counts["dropped"] += 1
                return False
            self._pending.append((record, future))
            self._counts["queued"] += 1
            self._pending_cond.notify()
            return True

    def _handled(self) -> int:
        """Accepted records that are stored, dropped, or (while degraded) safe in the journal (lock held)."""
        waiting = self._own_durable - self._own_passed if self._degraded else 0
        return self._own_passed + waiting + self._handled_other

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted so far is stored, dropped, or — while the database is down —
        in the journal; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._handled_cond:
            target = self._counts["queued"]
            while self._handled() < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._handled_cond.wait(remaining)
        return True

    def close(self, timeout: float | None = 10.0) -> bool:
        """Refuse new records, flush, and stop the threads. True if everything was handled in time."""
        start = time.monotonic()
        with self._lock:
            self._closed = True
        flushed = self.flush(timeout)
        self._stop.set()
        with self._lock:
            self._journal_stop = True
            self._pending_cond.notify_all()
            self._wake.notify_all()
        for thread in (self._thread, self._journal_thread):
            if thread.is_alive():
                remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
                thread.join(remaining)
        stopped = not self._thread.is_alive() and not self._journal_thread.is_alive()
        if stopped:
            self._calls.stop()
        if stopped and self._journal is not None:
            self._cut(rewrite=False)
            self._journal.close()  # releases the flock
            self._journal = None
        return flushed and stopped

    def stats(self) -> dict[str, Any]:
        """Counters: queued (accepted), written, spooled (waited in the journal for an outage), replayed,
        dropped (incl. invalid), invalid, spool_skipped (unreadable journal lines), overflowed (kept on
        disk only, the memory copy being full), queue_depth (not stored yet), degraded."""
        with self._lock:
            data: dict[str, Any] = dict(self._counts)
            data["degraded"] = self._degraded
            data["queue_depth"] = len(self._pending) + len(self._direct) + self._own_durable - self._own_passed
        return data

    @property
    def degraded(self) -> bool:
        return self._degraded

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- journal thread ----------------------------------------------------------------------

    def _open_journal(self) -> _Journal | None:
        try:
            return _Journal(self._spool)
        except SpoolInUse:
            raise
        except OSError as exc:  # records are then written from memory, and dropped while the database is down
            log.warning("cannot open the episode journal %s: %s", self._spool.name, exc)
            return None

    def _journal_loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._journal_stop:
                    self._pending_cond.wait()
                if not self._pending:
                    return
                group, self._pending = self._pending, []
            try:
                self._journal_group(group)
            except Exception:  # the thread must survive anything
                log.exception("episode journal error")
                self._settle(group, False)

    def _journal_group(self, group: list[tuple[EpisodeRecord, Future[bool] | None]]) -> None:
        """One write and one fsync for every record that arrived since the last one (a group commit)."""
        lines: list[bytes] = []
        kept: list[tuple[EpisodeRecord, Future[bool] | None]] = []
        for record, future in group:
            try:
                lines.append(json.dumps(record.to_json(), ensure_ascii=True, default=str).encode() + b"\n")
                kept.append((record, future))
            except (TypeError, ValueError, AttributeError) as exc:
                log.error("dropping episode that cannot be serialised: %s", exc)
                self._settle([(record, future)], False, dropped=True)
        if not kept:
            return
        try:
            if self._journal is None:
                raise OSError("no journal")
            position = self._journal.append(b"".join(lines))
        except OSError as exc:
            if self._journal is not None:
                log.error("episode journal not writable, %d episodes kept in memory only: %s", len(kept), exc)
            with self._lock:
                self._direct.extend(record for record, _ in kept)
                self._wake.notify_all()
            self._settle(kept, False)
            return
        with self._lock:
            for (record, _), line in zip(kept, lines, strict=True):
                entry = _Entry(position, position + len(line), record)
                position = entry.end
                if len(self._cache) < self._max_queue:
                    self._cache.append(entry)
                else:
                    self._counts["overflowed"] += 1  # on disk only; the writer reads it back
            self._durable = position
            self._own_durable += len(kept)
            if self._spooling:
                self._mark_spooled()
            self._wake.notify_all()
            self._handled_cond.notify_all()
        self._settle(kept, True)

    def _settle(
        self, group: list[tuple[EpisodeRecord, Future[bool] | None]], durable: bool, *, dropped: bool = False
    ) -> None:
        if dropped:
            with self._lock:
                self._counts["dropped"] += len(group)
                self._handled_other += len(group)
                self._handled_cond.notify_all()
        for _, future in group:
            if future is not None and not future.done():
                future.set_result(durable)

    def _mark_spooled(self) -> None:
        """Count every journaled record not stored yet as spooled (lock held, an outage)."""
        self._spooling = True
        self._own_spooled = max(self._own_spooled, self._own_passed)
        self._counts["spooled"] += self._own_durable - self._own_spooled
        self._own_spooled = self._own_durable
        self._spooled_mark = max(self._spooled_mark, self._durable)

    # ---- writer thread -----------------------------------------------------------------------

    def _count(self, key: str, n: int) -> None:
        with self._lock:
            self._counts[key] += n

    def _run(self) -> None:
        while True:
            try:
                if not self._step():
                    return
            except Exception:  # the thread must survive anything; records are counted, not lost silently
                log.exception("episode writer loop error")
                time.sleep(0.05)

    def _step(self) -> bool:
        """One unit of work; False when the thread should end."""
        if self._direct:
            self._write_direct()
            return True
        if self._degraded:
            wait = self._next_retry - time.monotonic()
            if wait > 0:
                if self._stop.is_set():
                    return False  # what is left stays in the journal for the next process
                self._stop.wait(min(wait, 0.1))
                return True
            self._recover()
            return True
        batch = self._take_batch()
        if batch is None:
            return not self._stop.is_set()
        self._handle(batch)
        return True

    def _available(self) -> bool:
        return self._durable > self._stored or bool(self._direct)

    def _take_batch(self) -> _Batch | None:
        with self._lock:
            if not self._available():
                if self._stop.is_set():
                    return None
                self._wake.wait(0.1)
                if not self._available():
                    return None
            short = len(self._cache) < self._batch_size - 1
        # Linger once for the whole interval instead of waking on every record: under load a wake-up
        # per record cost the request path a GIL hand-off each (about a tenth of its CPU).
        if short and self._flush_interval_s > 0:
            self._stop.wait(self._flush_interval_s)
        return self._gather()

    def _gather(self) -> _Batch | None:
        """The next records after ``_stored``: from the memory copy, else read back from the journal."""
        with self._lock:
            batch = _Batch(self._stored, self._stored)
            while self._cache and len(batch.records) < self._batch_size and self._cache[0].start == batch.end:
                entry = self._cache.popleft()
                batch.records.append(entry.record)
                batch.ends.append(entry.end)
                batch.end = entry.end
                batch.own += 1
            if batch.records:
                return batch
            limit = self._cache[0].start if self._cache else self._durable
        if limit <= batch.start or self._journal is None:
            return None
        return self._read_back(batch, limit)

    def _read_back(self, batch: _Batch, limit: int) -> _Batch:
        """Up to a batch of records from the journal between ``batch.start`` and ``limit`` (line ends)."""
        assert self._journal is not None
        chunk = 1 << 20
        while True:
            data = self._journal.read(batch.start, min(limit, batch.start + chunk))
            lines = data.split(b"\n")[:-1]  # the last piece is cut short (or empty)
            if lines or not data or batch.start + len(data) >= limit:
                break
            chunk *= 4  # one record longer than the chunk
        position = batch.start
        for line in lines[: self._batch_size]:
            end = position + len(line) + 1
            own = position >= self._startup_end
            position = end
            try:
                batch.records.append(EpisodeRecord.from_json(json.loads(line)))
                batch.ends.append(end)
                batch.own += own
            except (ValueError, TypeError, AttributeError):
                if line.strip():
                    log.warning("skipping an unreadable journal line (%d bytes)", len(line))
                    batch.skipped += 1
                batch.own += own
        batch.end = position
        if batch.end == batch.start:  # nothing readable up to the limit: never stall on it
            batch.end = limit
        return batch

    def _handle(self, batch: _Batch) -> None:
        try:
            invalid = self._commit(batch.records) if batch.records else 0
        except _Outage as exc:
            log.warning("database unavailable, episodes wait in the journal: %s", exc.__cause__ or exc)
            with self._lock:
                self._degraded = True
                self._mark_spooled()
                self._handled_cond.notify_all()
            self._next_retry = time.monotonic() + self._retry_interval_s
            self._cut(rewrite=True)  # the journal now holds exactly what waits for the database
            return
        self._advance(batch, invalid)

    def _advance(self, batch: _Batch, invalid: int) -> None:
        """``batch`` is stored (``invalid`` of its records dropped): move past it, cut the journal."""
        with self._lock:
            replayed = sum(1 for end in batch.ends if end <= self._spooled_mark)
            written = len(batch.records) - replayed
            dropped_written = min(invalid, written)
            self._counts["written"] += written - dropped_written
            self._counts["replayed"] += replayed - (invalid - dropped_written)
            self._counts["spool_skipped"] += batch.skipped
            self._stored = batch.end
            self._own_passed += batch.own
            if self._degraded and self._stored >= self._durable:
                self._degraded = self._spooling = False
                log.info("database available again; journal replayed")
            self._handled_cond.notify_all()
        self._cut(rewrite=False)

    def _cut(self, *, rewrite: bool) -> None:
        """Drop the stored head of the journal: always when it is all stored, else once it is large."""
        journal = self._journal
        if journal is None:
            return
        head = self._stored - journal.base
        try:
            journal.cut(self._stored, rewrite=rewrite or head >= self._compact_bytes)
        except OSError as exc:  # e.g. its directory was deleted: the journal grows until it can be cut
            log.debug("cannot compact the episode journal: %s", exc)

    def _recover(self) -> None:
        """One attempt while degraded: the oldest waiting batch (or a probe when none waits)."""
        self._next_retry = time.monotonic() + self._retry_interval_s
        batch = self._gather()
        try:
            invalid = self._commit(batch.records) if batch is not None and batch.records else 0
            if batch is None or not batch.records:
                self._probe()
        except _Outage as exc:
            log.debug("database still unavailable: %s", exc)
            return
        except OSError as exc:
            log.error("cannot read the episode journal %s: %s", self._spool.name, exc)
            return
        self._next_retry = 0.0  # go on with the next batch at once
        if batch is None:
            with self._lock:
                if self._stored >= self._durable:
                    self._degraded = self._spooling = False
                    log.info("database available again")
                self._handled_cond.notify_all()
            return
        self._advance(batch, invalid)

    def _write_direct(self) -> None:
        """Records the journal could not take: written from memory, or dropped while the database is down."""
        with self._lock:
            records = list(self._direct)
            self._direct.clear()
        try:
            if self._degraded:
                raise _Outage("degraded")
            invalid = self._commit(records)
            self._count("written", len(records) - invalid)
        except _Outage as exc:
            log.error("database and journal unavailable, dropping %d episodes: %s", len(records), exc)
            with self._lock:
                self._counts["dropped"] += len(records)
                if not self._degraded:
                    self._degraded = True
                    self._mark_spooled()
                    self._next_retry = time.monotonic() + self._retry_interval_s
        finally:
            with self._lock:
                self._handled_other += len(records)
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
