"""The durable outbox: a write is committed to a local file before it is acknowledged (seed 004).

Every persistence write (a turn, a participant event, a session summary) is
:meth:`Outbox.put` here. ``put`` returns once the record is committed to a local SQLite
file; that commit is the acknowledgement, and from then on the record is not lost: one
writer task delivers the records to the :class:`~clara_voice.persistence.base.Backend` in
the order they were put, retrying a failing backend with capped exponential backoff,
and deletes each one once delivered.

This module is the asyncio side: :class:`Outbox` (puts, group commits, the writer loop,
backoff, adoption reports, logging and :class:`OutboxStats`). The files are the private
:mod:`clara_voice.persistence._outbox_files`: each instance (one per job process) has its
own SQLite file locked with ``flock``, sweeps the folder for the files of ended processes
(SIGKILL included) and adopts them, their records delivered in their own order before the
instance's own, and keeps refused records as dead letters. The files are in WAL mode with
``synchronous=FULL``, so an acknowledged record survives a power loss or an OS crash, not
only a killed process; puts waiting at the same time share one transaction (group
commit). That module's docstring has the details.

Threads. All SQLite and file-lock I/O runs on one thread owned by the outbox, never on the
event loop; the loop side only serializes payloads and moves futures.

Deliveries are at least once (a process killed between a backend's success and the delete
re-delivers the record later); the record's ``key`` makes them idempotent at the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import sqlite3
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from livekit.agents.utils import aio

from clara_voice._lifecycle import AsyncService
from clara_voice.logging import get_logger
from clara_voice.persistence._outbox_files import _Adoption, _Row, _Store, encode_record
from clara_voice.persistence._outbox_schema import SCHEMA_VERSION as SCHEMA_VERSION
from clara_voice.persistence._outbox_writer import OutboxStats, OutboxWriter
from clara_voice.persistence.base import (
    Backend,
    OutboxError,
    OutboxRecord,
)

OUTBOX_DIRNAME = "outbox"
"""The folder, under the data directory, holding the outbox files."""
THREAD_NAME = "clara-outbox"
"""Name prefix of the outbox's I/O thread."""

_COMMIT_BATCH = 500  # most puts committed in one transaction

T = TypeVar("T")


class Outbox(AsyncService):
    """Commits records locally, acknowledges them, and delivers them to ``backend`` in order.

    ``directory`` is the data directory (the files go to ``directory/outbox/``). A failing
    delivery is retried after ``retry_base`` seconds, doubling up to ``retry_max`` (with
    jitter); ``deliver_timeout`` bounds one attempt; a record failing ``max_attempts``
    times, or for longer than ``max_age`` seconds, is dead-lettered once the backend takes
    the records after it (at most ``max_dead_letters`` are kept); :meth:`aclose` gives the writer
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
        max_attempts: int = 10,
        max_age: float | None = 900.0,
        max_bytes: int = 256 << 20,
        max_dead_letters: int = 10_000,
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
        self._store = _Store(
            Path(directory).absolute() / OUTBOX_DIRNAME, max_dead_letters=max_dead_letters
        )
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
        self._commit_job: asyncio.Future[tuple[int, int]] | None = None
        self._commits_idle = asyncio.Event()
        self._commits_idle.set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._closed_ev = asyncio.Event()
        self._writer = OutboxWriter(
            run=self._run,
            store=self._store,
            backend=backend,
            stats=self._stats,
            log=self._log,
            retry_base=self._retry_base,
            retry_max=self._retry_max,
            deliver_timeout=deliver_timeout,
            max_attempts=max_attempts,
            max_age=max_age,
            sweep_interval=sweep_interval,
            on_empty=self._update_drained,
            on_adopted=self._adopted,
        )
        self._max_bytes = max_bytes
        self._intake_bytes = 0
        self._full = False
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
        self._writer_atask = asyncio.create_task(self._writer.run(), name="clara-outbox-writer")
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
            row = encode_record(record)
        except (TypeError, ValueError) as exc:
            future.set_exception(OutboxError(f"record {record.key!r}: {exc}", retryable=False))
            return future
        if self._stats.pending_bytes + self._intake_bytes + row.size > self._max_bytes:
            future.set_exception(self._refuse_full(record))
            return future
        self._full = False
        self._intake_bytes += row.size
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
            self._writer.finish()
            if writer is not None:
                await asyncio.wait({writer}, timeout=self._flush_timeout)
        finally:
            if writer is not None:
                await aio.cancel_and_wait(writer)  # returns at once when it has finished
                if not writer.cancelled() and (exc := writer.exception()) is not None:
                    failures.append(exc)
            delivered = self._writer.take_delivered()
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
        self, batch: list[tuple[_Row, asyncio.Future[None]]], job: asyncio.Future[tuple[int, int]]
    ) -> None:
        self._commit_job = None
        self._intake_bytes -= sum(row.size for row, _ in batch)  # now pending, or refused
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
            count, size = job.result()
            self._stats.pending += count
            self._stats.pending_bytes += size
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
        if self._intake:
            self._schedule_commit()
        else:
            self._commits_idle.set()
        self._writer.wake()  # new records; or none (duplicates), and the writer says it is drained

    def _refuse_full(self, record: OutboxRecord) -> OutboxError:
        """The backlog is at ``max_bytes``: the oldest records are kept, new ones refused
        (each caller hears so; the first refusal of a streak is said critically)."""
        if not self._full:
            self._full = True
            self._log.critical(
                "outbox full: new records are refused until the backend takes the backlog "
                "(raise CLARA_OUTBOX_MAX_BYTES, or fix the backend)",
                extra={
                    "pending": self._stats.pending,
                    "pending_bytes": self._stats.pending_bytes,
                    "max_bytes": self._max_bytes,
                },
            )
        return OutboxError(
            f"record {record.key!r} refused: the outbox is full ({self._max_bytes} bytes)",
            retryable=True,
        )

    def _update_drained(self) -> None:
        # called by the writer when every file is empty
        if self._stats.pending <= 0 and self._commit_job is None and not self._intake:
            self._drained.set()

    def _adopted(self, adoptions: list[_Adoption]) -> int:
        total = 0
        if any(a.error is None for a in adoptions):
            self._drained.clear()
            self._writer.wake()  # the writer delivers and deletes it (even an empty one)
        for adoption in adoptions:
            if adoption.error is not None:
                self._log.error(
                    "outbox file of an ended process could not be read, left as it is",
                    extra={"file": adoption.name, "error": adoption.error},
                )
                continue
            total += adoption.pending
            self._stats.pending_bytes += adoption.pending_bytes
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


__all__ = ["OUTBOX_DIRNAME", "Outbox", "OutboxError", "OutboxStats"]
