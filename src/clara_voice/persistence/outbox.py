"""The durable outbox: a write is committed to a local file before it is acknowledged (seed 004).

Every persistence write (a turn, a participant event, a session summary) is
:meth:`Outbox.put` here. ``put`` returns once the record is committed to a local SQLite
file; that commit is the acknowledgement, and from then on the record is not lost: one
writer task delivers the records to the :class:`~clara_voice.persistence.base.Backend` in
the order they were put, retrying a failing backend with capped exponential backoff,
and deletes each one once delivered.

Files. Each outbox instance (one per job process) has its own file
``<directory>/outbox/<uuid>.db`` held with an exclusive ``flock`` on the sidecar
``<uuid>.lock`` for the life of the instance. At start (and every ``sweep_interval``
seconds when idle) it sweeps the folder: a ``.db`` whose lock it can take belongs to a
process that ended (SIGKILL included: the kernel drops the lock) with records left. It is
adopted, its records delivered in their own order before the instance's own, and deleted
once empty. A file whose lock is held by a live process is left alone. A lock only counts
while its file is still the one at the path (same inode), which closes the races with a
sweeper deleting an empty file or a stale lock file.

Durability. The files are in WAL mode with ``synchronous=FULL``: each commit fsyncs the WAL
before ``put`` returns, so an acknowledged record survives a power loss or an OS crash,
not only a killed process (``NORMAL`` would only cover the latter, which breaks "an
acknowledged record is never lost"). Puts waiting at the same time share one transaction
(group commit), so the fsync is paid once per batch, not once per record.

Threads. All SQLite and file-lock I/O runs on one thread owned by the outbox, never on the
event loop; the loop side only serializes payloads and moves futures.

Deliveries are at least once (a process killed between a backend's success and the delete
re-delivers the record later); the record's ``key`` makes them idempotent at the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import math
import os
import random
import re
import sqlite3
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from livekit.agents.utils import aio

from clara_voice.logging import get_logger

from .base import RECORD_KINDS, Backend, BackendError, OutboxRecord

OUTBOX_DIRNAME = "outbox"
"""The folder, under the data directory, holding the outbox files."""
SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of an outbox file."""
THREAD_NAME = "clara-outbox"
"""Name prefix of the outbox's I/O thread."""

_SCHEMA = (
    # seq orders delivery; AUTOINCREMENT so a deleted seq is never reused by a later record
    """CREATE TABLE records (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    """CREATE TABLE dead_letters (
        key TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        error TEXT NOT NULL,
        created_at TEXT NOT NULL,
        failed_at TEXT NOT NULL
    )""",
)
_PAGE = 100  # records read per round trip to the thread
_COMMIT_BATCH = 500  # most puts committed in one transaction
_BUSY_TIMEOUT = 5.0  # seconds SQLite waits for a lock held by another connection
_NAME = re.compile(r"[0-9a-f]{32}")
_ERROR_CHARS = 500

T = TypeVar("T")


class OutboxError(Exception):
    """The outbox could not take a record (closed, not JSON, the local file failed)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(kw_only=True)
class OutboxStats:
    """Counters of one outbox instance (a snapshot when read from :attr:`Outbox.stats`)."""

    pending: int = 0
    """Acknowledged records not yet delivered (own and adopted files)."""
    delivered: int = 0
    dead_lettered: int = 0
    retries: int = 0
    """Failed delivery attempts that were tried again."""
    adopted_files: int = 0
    backend_up: bool = True
    last_error: str | None = None


class Outbox:
    """Commits records locally, acknowledges them, and delivers them to ``backend`` in order.

    ``directory`` is the data directory (the files go to ``directory/outbox/``). A failing
    delivery is retried after ``retry_base`` seconds, doubling up to ``retry_max`` (with
    jitter); ``deliver_timeout`` bounds one attempt; :meth:`aclose` gives the writer
    ``flush_timeout`` seconds to deliver what is left. ``sweep_interval`` (``None``: only at
    start) is how often an idle outbox looks for files of dead processes. The outbox does
    not close ``backend``.
    """

    def __init__(
        self,
        directory: Path,
        backend: Backend,
        *,
        retry_base: float = 0.5,
        retry_max: float = 30.0,
        flush_timeout: float = 5.0,
        deliver_timeout: float = 30.0,
        sweep_interval: float | None = 60.0,
        log_context: Mapping[str, Any] | None = None,
    ) -> None:
        for name, value in (
            ("retry_base", retry_base),
            ("retry_max", retry_max),
            ("deliver_timeout", deliver_timeout),
            ("sweep_interval", sweep_interval if sweep_interval is not None else 1.0),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if not (math.isfinite(flush_timeout) and flush_timeout >= 0):
            raise ValueError(f"flush_timeout must be >= 0 seconds, got {flush_timeout!r}")
        self._store = _Store(Path(directory).absolute() / OUTBOX_DIRNAME)
        self._backend = backend
        self._retry_base = retry_base
        self._retry_max = max(retry_max, retry_base)
        self._flush_timeout = flush_timeout
        self._deliver_timeout = deliver_timeout
        self._sweep_interval = sweep_interval
        self._log = get_logger("clara_voice.persistence.outbox", **(log_context or {}))
        self._stats = OutboxStats()
        self._executor: ThreadPoolExecutor | None = None
        self._writer_atask: asyncio.Task[None] | None = None
        # puts waiting for their commit, and the commit under way (at most one)
        self._intake: deque[tuple[_Row, asyncio.Future[None]]] = deque()
        self._commit_job: asyncio.Future[int] | None = None
        self._commits_idle = asyncio.Event()
        self._commits_idle.set()
        self._wake = asyncio.Event()  # new records, an adoption, or closing
        self._retry_now = asyncio.Event()  # cuts one backoff pause short (closing)
        self._drained = asyncio.Event()
        self._drained.set()
        self._closed_ev = asyncio.Event()
        self._delivered: list[tuple[_File, int, str]] = []  # to delete at the next round trip
        self._down_since: float | None = None
        self._outage_retries = 0
        self._started = False
        self._closing = False
        self._closed = False

    @property
    def directory(self) -> Path:
        """The folder of the outbox files (``<data dir>/outbox``)."""
        return self._store.directory

    @property
    def path(self) -> Path | None:
        """This instance's own file, once started."""
        return self._store.own.db_path if self._store.own is not None else None

    @property
    def stats(self) -> OutboxStats:
        """A snapshot of the counters."""
        return replace(self._stats)

    def pending_count(self) -> int:
        """Acknowledged records not yet delivered (or dead-lettered)."""
        return self._stats.pending

    async def start(self) -> None:
        """Create and lock this instance's file, adopt orphans, start the writer; idempotent."""
        if self._started or self._closed:
            return
        self._started = True
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
        try:
            adoptions = await self._run(self._store.open)
        except BaseException as exc:
            self._closing = self._closed = True
            # after the open job (even a cancelled start's): release what it may have locked
            with contextlib.suppress(Exception):
                await self._run(functools.partial(self._store.close, []))
            self._executor.shutdown(wait=True)  # every job has ended: the thread is idle
            self._closed_ev.set()
            if isinstance(exc, Exception):
                raise OutboxError(
                    f"could not open the outbox in {self.directory}: {exc}",
                    retryable=isinstance(exc, sqlite3.OperationalError),
                ) from exc
            raise
        if self._closing:  # aclose() ran meanwhile; its close job came after the open
            return
        self._adopted(adoptions)
        self._writer_atask = asyncio.create_task(self._run_writer(), name="clara-outbox-writer")
        self._log.info(
            "outbox started",
            extra={
                "file": self.path,
                "adopted_files": len(adoptions),
                "pending": self.pending_count(),
            },
        )

    def put_nowait(self, record: OutboxRecord) -> asyncio.Future[None]:
        """Queue ``record`` for its commit and return at once (for synchronous callers).

        The future resolves when the record is committed (acknowledged) and fails with an
        :class:`OutboxError` when it cannot be (closed, not JSON, the file failed). A key
        already in the outbox is acknowledged without a second copy. Call from the loop.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._started or self._closing or self._closed:
            state = "closed" if self._closing or self._closed else "not started"
            future.set_exception(OutboxError(f"the outbox is {state}", retryable=False))
            return future
        try:
            row = _encode(record)
        except (TypeError, ValueError) as exc:
            future.set_exception(OutboxError(f"record {record.key!r}: {exc}", retryable=False))
            return future
        self._intake.append((row, future))
        self._drained.clear()
        self._schedule_commit()
        return future

    async def put(self, record: OutboxRecord) -> None:
        """Commit ``record`` to the outbox file; returns once it is committed.

        Raises :class:`OutboxError`. A put that is cancelled may still be committed (and
        then delivered): only its acknowledgement is lost.
        """
        await self.put_nowait(record)

    async def wait_drained(self) -> None:
        """Wait until every record put so far is delivered or dead-lettered and the files
        are tidied (the writer found nothing left); bound it with a timeout."""
        await self._drained.wait()

    async def adopt_orphans(self) -> int:
        """Sweep the folder for files of ended processes now; returns the records adopted."""
        if not self._started or self._closing or self._closed:
            return 0
        adoptions = await self._run(self._store.sweep)
        return self._adopted(adoptions)

    async def aclose(self) -> None:
        """Stop taking puts, deliver for up to ``flush_timeout`` seconds, release the file.

        Puts already made are committed first. What is not delivered stays in the file
        (unlocked) for the next process; an empty file is deleted. Safe to call twice.
        """
        if self._closing or self._closed:
            await self._closed_ev.wait()
            return
        self._closing = True
        if not self._started:
            self._closed = True
            self._closed_ev.set()
            return
        assert self._executor is not None
        writer = self._writer_atask  # None while start() is still opening the file
        failures: list[BaseException] = []
        try:
            # acknowledgements callers wait for; the file cannot be closed under them anyway
            await self._commits_idle.wait()
            self._wake.set()
            self._retry_now.set()
            if writer is not None:
                await asyncio.wait({writer}, timeout=self._flush_timeout)
        finally:
            if writer is not None:
                await aio.cancel_and_wait(writer)  # returns at once when it has finished
                if not writer.cancelled() and (exc := writer.exception()) is not None:
                    failures.append(exc)
            delivered, self._delivered = self._delivered, []
            try:
                # queued after every job of the writer's, so it sees what they wrote
                self._stats.pending = await self._run(
                    functools.partial(self._store.close, delivered)
                )
            except Exception as exc:
                failures.append(exc)
            self._executor.shutdown(wait=True)  # every job has ended: the thread is idle
            self._closed = True
            self._closed_ev.set()
        for failure in failures:
            self._log.error("error while closing the outbox", exc_info=failure)
        self._log.info(
            "outbox closed",
            extra={
                "left": self._stats.pending,
                "delivered": self._stats.delivered,
                "dead_lettered": self._stats.dead_lettered,
            },
        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the thread ------------------------------------------------------------------------

    def _submit(self, job: Callable[[], T]) -> asyncio.Future[T]:
        assert self._executor is not None
        return asyncio.wrap_future(self._executor.submit(job))

    async def _run(self, job: Callable[[], T]) -> T:
        # shielded: a cancelled caller never drops a queued job, so jobs run in order, in full
        return await asyncio.shield(self._submit(job))

    def _schedule_commit(self) -> None:
        if self._commit_job is not None or not self._intake:
            return
        batch = [self._intake.popleft() for _ in range(min(len(self._intake), _COMMIT_BATCH))]
        self._commits_idle.clear()
        self._commit_job = self._submit(
            functools.partial(self._store.commit, [r for r, _ in batch])
        )
        self._commit_job.add_done_callback(functools.partial(self._on_committed, batch))

    def _on_committed(
        self, batch: list[tuple[_Row, asyncio.Future[None]]], job: asyncio.Future[int]
    ) -> None:
        self._commit_job = None
        failure = None if job.cancelled() else job.exception()
        if job.cancelled() or failure is not None:
            self._log.error(
                "could not commit records to the outbox",
                extra={"records": len(batch)},
                exc_info=failure,
            )
            for _, future in batch:
                if not future.done():
                    future.set_exception(
                        OutboxError(
                            f"could not commit to the outbox: {failure!r}",
                            retryable=isinstance(failure, sqlite3.OperationalError),
                        )
                    )
        else:
            self._stats.pending += job.result()
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
        if self._intake:
            self._schedule_commit()
        else:
            self._commits_idle.set()
        self._wake.set()  # new records; or none (duplicates), and the writer says it is drained

    def _update_drained(self) -> None:
        # called by the writer when every file is empty
        if self._stats.pending <= 0 and self._commit_job is None and not self._intake:
            self._drained.set()

    def _adopted(self, adoptions: list[_Adoption]) -> int:
        total = 0
        if any(a.error is None for a in adoptions):
            self._drained.clear()
            self._wake.set()  # the writer delivers and deletes it (even an empty one)
        for adoption in adoptions:
            if adoption.error is not None:
                self._log.error(
                    "outbox file of an ended process could not be read, left as it is",
                    extra={"file": adoption.name, "error": adoption.error},
                )
                continue
            total += adoption.pending
            self._stats.adopted_files += 1
            self._log.info(
                "adopted the outbox file of an ended process",
                extra={
                    "file": adoption.name,
                    "pending": adoption.pending,
                    "dead_letters": adoption.dead_letters,
                },
            )
        self._stats.pending += total
        return total

    # -- the writer ------------------------------------------------------------------------

    async def _run_writer(self) -> None:
        failed_rounds = 0
        while True:
            try:
                found = await self._deliver_page()
                failed_rounds = 0
                if not found:
                    if self._closing:
                        return
                    await self._wait_for_work()
            except Exception as exc:
                # one failing round (the local file, most likely) is logged; the loop goes on
                failed_rounds += 1
                self._log.error("outbox writer round failed", exc_info=exc)
                if self._closing:
                    return
                await self._pause(self._backoff(failed_rounds))

    async def _deliver_page(self) -> bool:
        self._wake.clear()  # before reading, so a commit landing after the read wakes us
        delivered, self._delivered = self._delivered, []
        try:
            page = await self._run(functools.partial(self._store.next_page, delivered))
        except BaseException:
            self._delivered[:0] = delivered  # deleting twice is harmless: seqs are never reused
            raise
        for name in page.retired:
            self._log.info("adopted outbox file delivered and deleted", extra={"file": name})
        if page.file is None:
            self._update_drained()
            return False
        for seq, record in page.rows:
            await self._deliver(page.file, seq, record)
        return True

    async def _deliver(self, file: _File, seq: int, record: OutboxRecord) -> None:
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self._deliver_timeout):
                    await self._backend.deliver(record)
            except BackendError as exc:
                if not exc.retryable:
                    self._backend_answered()
                    await self._dead_letter(file, seq, record, exc)
                    return
                error: Exception = exc
            except Exception as exc:
                # timeouts, connection errors, a backend's own bug: keep the record, try again
                error = exc
            else:
                self._backend_answered()
                self._delivered.append((file, seq, record.key))
                self._stats.delivered += 1
                self._stats.pending -= 1
                return
            attempt += 1
            delay = self._backoff(attempt)
            self._stats.retries += 1
            self._stats.last_error = _describe(error)
            if self._down_since is None:
                self._down_since = asyncio.get_running_loop().time()
                self._outage_retries = 0
                self._stats.backend_up = False
                self._log.warning(
                    "backend down, records kept in the outbox",
                    extra={"key": record.key, "error": self._stats.last_error, "retry_in": delay},
                )
            self._outage_retries += 1
            if self._delivered:  # so a process killed during the outage re-delivers less
                await self._forget_delivered()
            await self._pause(delay)

    async def _forget_delivered(self) -> None:
        delivered, self._delivered = self._delivered, []
        try:
            await self._run(functools.partial(self._store.forget, delivered))
        except BaseException:
            self._delivered[:0] = delivered
            raise

    async def _dead_letter(
        self, file: _File, seq: int, record: OutboxRecord, exc: BackendError
    ) -> None:
        error = _describe(exc)
        await self._run(functools.partial(self._store.dead_letter, file, seq, record.key, error))
        self._stats.dead_lettered += 1
        self._stats.pending -= 1
        self._stats.last_error = error
        self._log.warning(
            "record refused by the backend, moved to the dead letters",
            extra={"key": record.key, "kind": record.kind, "error": error},
        )

    def _backend_answered(self) -> None:
        if self._down_since is None:
            return
        down_for = asyncio.get_running_loop().time() - self._down_since
        self._down_since = None
        self._stats.backend_up = True
        self._log.info(
            "backend recovered, delivering the outbox",
            extra={
                "down_s": round(down_for, 3),
                "retries": self._outage_retries,
                "pending": self._stats.pending,
            },
        )

    def _backoff(self, attempt: int) -> float:
        # capped exponential backoff with "equal jitter": somewhere in [cap/2, cap]
        cap = min(self._retry_max, self._retry_base * 2 ** min(attempt - 1, 32))
        return random.uniform(cap / 2, cap)

    async def _pause(self, delay: float) -> None:
        try:
            async with asyncio.timeout(delay):
                await self._retry_now.wait()
        except TimeoutError:
            return
        self._retry_now.clear()  # one early retry per signal, then the backoff again

    async def _wait_for_work(self) -> None:
        if self._sweep_interval is None:
            await self._wake.wait()
            return
        try:
            async with asyncio.timeout(self._sweep_interval):
                await self._wake.wait()
        except TimeoutError:
            self._adopted(await self._run(self._store.sweep))


# -- the files (every function below runs on the outbox's thread) -----------------------


@dataclass(frozen=True)
class _Row:
    key: str
    kind: str
    payload: str


@dataclass(eq=False)
class _File:
    name: str
    db_path: Path
    lock_path: Path
    lock_fd: int
    conn: sqlite3.Connection
    own: bool
    closed: bool = False


@dataclass(frozen=True)
class _Adoption:
    name: str
    pending: int = 0
    dead_letters: int = 0
    error: str | None = None


@dataclass(frozen=True)
class _Page:
    file: _File | None
    rows: list[tuple[int, OutboxRecord]] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)


class _Store:
    """The outbox's SQLite files: its own and the adopted ones. Used only on its thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.own: _File | None = None
        self.adopted: list[_File] = []  # delivered before our own, oldest first
        self._unreadable: set[str] = set()  # orphans that failed to open: left for a human

    def open(self) -> list[_Adoption]:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name, lock_path, fd = self._new_lock()
        db_path = self.directory / f"{name}.db"
        conn: sqlite3.Connection | None = None
        try:
            # created private before SQLite opens it; the -wal and -shm files copy its mode
            os.close(os.open(db_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            conn = _connect(db_path, create=True)
            _init_schema(conn)
        except BaseException:
            if conn is not None:
                conn.close()
            db_path.unlink(missing_ok=True)
            lock_path.unlink(missing_ok=True)
            os.close(fd)
            raise
        self.own = _File(name, db_path, lock_path, fd, conn, own=True)
        return self.sweep()

    def _new_lock(self) -> tuple[str, Path, int]:
        for _ in range(8):
            name = uuid.uuid4().hex
            path = self.directory / f"{name}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            # a sweeper may delete a lock file with no .db before we lock it: start over
            if _try_lock(fd) and _is_current(fd, path):
                return name, path, fd
            os.close(fd)
        raise OutboxError("could not lock a new outbox file", retryable=True)

    def sweep(self) -> list[_Adoption]:
        assert self.own is not None
        taken = {self.own.name, *(f.name for f in self.adopted), *self._unreadable}
        databases: list[tuple[float, str]] = []
        locks: set[str] = set()
        with os.scandir(self.directory) as entries:
            for entry in entries:
                stem, _, suffix = entry.name.partition(".")
                if not _NAME.fullmatch(stem) or stem in taken:
                    continue
                if suffix == "db":
                    with contextlib.suppress(FileNotFoundError):
                        databases.append((entry.stat().st_mtime, stem))
                elif suffix == "lock":
                    locks.add(stem)
        adoptions = []
        for _, name in sorted(databases):  # oldest first
            try:
                adoption = self._adopt(name)
            except (OSError, sqlite3.Error, OutboxError) as exc:
                self._unreadable.add(name)
                adoption = _Adoption(name, error=_describe(exc))
            if adoption is not None:
                adoptions.append(adoption)
        for name in locks.difference(n for _, n in databases):
            with contextlib.suppress(OSError):  # left for the next sweep
                self._remove_stale_lock(name)
        return adoptions

    def _adopt(self, name: str) -> _Adoption | None:
        assert self.own is not None
        db_path = self.directory / f"{name}.db"
        lock_path = self.directory / f"{name}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        if not (_try_lock(fd) and _is_current(fd, lock_path)):
            os.close(fd)  # a live process holds it, or it was just deleted
            return None
        if not db_path.exists():  # another sweeper delivered and deleted it meanwhile
            lock_path.unlink(missing_ok=True)
            os.close(fd)
            return None
        conn: sqlite3.Connection | None = None
        try:
            conn = _connect(db_path, create=False)
            _init_schema(conn)  # a process killed while creating its file left it empty
            (pending,) = conn.execute("SELECT count(*) FROM records").fetchone()
            dead = conn.execute(
                "SELECT key, kind, payload, error, created_at, failed_at FROM dead_letters"
            ).fetchall()
            if dead:  # kept in our own file, so the adopted one can be deleted once delivered
                with _transaction(self.own.conn):
                    self.own.conn.executemany(
                        "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?)", dead
                    )
                with _transaction(conn):
                    conn.execute("DELETE FROM dead_letters")
        except (sqlite3.Error, OutboxError) as exc:
            if conn is not None:
                conn.close()
            os.close(fd)
            self._unreadable.add(name)
            return _Adoption(name, error=_describe(exc))
        self.adopted.append(_File(name, db_path, lock_path, fd, conn, own=False))
        return _Adoption(name, pending=pending, dead_letters=len(dead))

    def _remove_stale_lock(self, name: str) -> None:
        # a lock file without its .db: its owner died before creating the file, or after
        # deleting it; a starting owner re-checks its lock after locking (see _new_lock)
        lock_path = self.directory / f"{name}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            if _try_lock(fd) and _is_current(fd, lock_path):
                db_path = self.directory / f"{name}.db"
                if not db_path.exists():
                    for suffix in ("-wal", "-shm"):
                        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
                    lock_path.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def commit(self, rows: list[_Row]) -> int:
        """Insert ``rows`` in one transaction; returns how many were new keys."""
        assert self.own is not None
        created_at = _now()
        with _transaction(self.own.conn):
            cursor = self.own.conn.executemany(
                "INSERT INTO records (key, kind, payload, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key) DO NOTHING",
                [(r.key, r.kind, r.payload, created_at) for r in rows],
            )
        return cursor.rowcount

    def next_page(self, delivered: list[tuple[_File, int, str]]) -> _Page:
        """Forget ``delivered``, then the next records to deliver: adopted files first."""
        self.forget(delivered)
        assert self.own is not None
        retired: list[str] = []
        for file in [*self.adopted, self.own]:
            rows = file.conn.execute(
                "SELECT seq, key, kind, payload FROM records ORDER BY seq LIMIT ?", (_PAGE,)
            ).fetchall()
            if rows:
                records = [
                    (seq, OutboxRecord(key=key, kind=kind, payload=json.loads(payload)))
                    for seq, key, kind, payload in rows
                ]
                return _Page(file, records, retired)
            if not file.own:
                self.adopted.remove(file)
                self._retire(file)
                retired.append(file.name)
        return _Page(None, [], retired)

    def dead_letter(self, file: _File, seq: int, key: str, error: str) -> None:
        """Move one record to the dead letters of this instance's own file."""
        assert self.own is not None
        own = self.own.conn
        row = file.conn.execute(
            "SELECT key, kind, payload, created_at FROM records WHERE seq = ? AND key = ?",
            (seq, key),
        ).fetchone()
        if row is None:
            return
        with _transaction(own):
            own.execute(
                "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?)",
                (*row[:3], error, row[3], _now()),
            )
            if file.own:
                own.execute("DELETE FROM records WHERE seq = ? AND key = ?", (seq, key))
        if not file.own:  # a crash in between leaves it in both: it is refused again, no loss
            with _transaction(file.conn):
                file.conn.execute("DELETE FROM records WHERE seq = ? AND key = ?", (seq, key))

    def close(self, delivered: list[tuple[_File, int, str]]) -> int:
        """Release every file (deleting our own when empty); returns the records left."""
        failures: list[Exception] = []
        try:
            self.forget(delivered)
        except Exception as exc:
            failures.append(exc)
        left = 0
        for file in [*self.adopted, *([self.own] if self.own else [])]:
            try:
                (pending,) = file.conn.execute("SELECT count(*) FROM records").fetchone()
                (dead,) = file.conn.execute("SELECT count(*) FROM dead_letters").fetchone()
                left += pending
                if pending == 0 and dead == 0:
                    self._retire(file)
                else:
                    self._release(file)
            except Exception as exc:
                failures.append(exc)
                with contextlib.suppress(Exception):
                    self._release(file)
        self.adopted = []
        if failures:
            raise ExceptionGroup("could not close every outbox file", failures)
        return left

    def forget(self, delivered: list[tuple[_File, int, str]]) -> None:
        """Delete delivered records (a seq is never reused, so deleting twice is harmless)."""
        by_file: dict[int, tuple[_File, list[tuple[int, str]]]] = {}
        for file, seq, key in delivered:
            by_file.setdefault(id(file), (file, []))[1].append((seq, key))
        for file, rows in by_file.values():
            if file.closed:  # retired since: nothing left to delete
                continue
            with _transaction(file.conn):
                file.conn.executemany("DELETE FROM records WHERE seq = ? AND key = ?", rows)

    def _retire(self, file: _File) -> None:
        # deleted while locked (the lock file last), so no sweeper adopts a half-deleted file
        file.closed = True
        file.conn.close()
        for path in (file.db_path, Path(f"{file.db_path}-wal"), Path(f"{file.db_path}-shm")):
            path.unlink(missing_ok=True)
        file.lock_path.unlink(missing_ok=True)
        os.close(file.lock_fd)

    def _release(self, file: _File) -> None:
        file.closed = True
        try:
            file.conn.close()  # the last connection checkpoints the WAL into the file
        finally:
            os.close(file.lock_fd)


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    mode = "rwc" if create else "rw"
    conn = sqlite3.connect(
        f"{path.as_uri()}?mode={mode}", uri=True, isolation_level=None, timeout=_BUSY_TIMEOUT
    )
    try:
        (journal,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if journal != "wal":
            raise OutboxError(f"{path.name} cannot use WAL mode ({journal})", retryable=False)
        conn.execute("PRAGMA synchronous = FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def _init_schema(conn: sqlite3.Connection) -> None:
    with _transaction(conn):
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version == SCHEMA_VERSION:
            return
        if version != 0:
            raise OutboxError(
                f"outbox file version {version}, this build reads {SCHEMA_VERSION}",
                retryable=False,
            )
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _is_current(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not one deleted, or replaced, since)."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


def _encode(record: OutboxRecord) -> _Row:
    if not isinstance(record, OutboxRecord):
        raise TypeError(f"expected an OutboxRecord, got {type(record).__name__}")
    if not record.key:
        raise ValueError("the record has no key")
    if record.kind not in RECORD_KINDS:
        raise ValueError(f"unknown record kind {record.kind!r}")
    if not isinstance(record.payload, dict):
        raise TypeError("the payload must be a JSON object")
    payload = json.dumps(record.payload, ensure_ascii=False, allow_nan=False)
    return _Row(record.key, record.kind, payload)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]


def _now() -> str:
    return datetime.now(UTC).isoformat()


__all__ = ["OUTBOX_DIRNAME", "Outbox", "OutboxError", "OutboxStats"]
