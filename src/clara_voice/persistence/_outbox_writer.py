"""The outbox's writer: one task delivering the committed records to the backend.

Records go out in the order they were put, one at a time: a failing backend is retried with
capped exponential backoff (``retry_base`` doubling up to ``retry_max``, with jitter), each
attempt bounded by ``deliver_timeout``, for as long as it takes: the backend is down or slow,
or refuses the credentials (401/403: said once, critically, naming CLARA_BACKEND_TOKEN),
and the records wait. A record the backend refuses for good goes to the dead letters, and
so does one whose delivery fails ``max_attempts`` times with an unexpected error (a bug, not
the backend's answer), so that no record can block the ones behind it. A delivered record
is deleted at the next round trip to the file thread. When
there is nothing to deliver, the writer waits for work, sweeping the folder for the files
of ended processes every ``sweep_interval`` seconds. It is owned by
:class:`~clara_voice.persistence.outbox.Outbox`, which tells it when work arrives and when
to finish.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from clara_voice.logging import ContextLogger
from clara_voice.persistence._outbox_files import _Adoption, _File, _Store
from clara_voice.persistence._outbox_schema import describe as _describe
from clara_voice.persistence.base import Backend, BackendError, OutboxRecord

T = TypeVar("T")


@dataclass(kw_only=True)
class OutboxStats:
    """Counters of one outbox instance (a snapshot when read from :attr:`Outbox.stats`)."""

    pending: int = 0
    """Acknowledged records not yet delivered (own and adopted files)."""
    pending_bytes: int = 0
    """Their payloads' size (what ``max_bytes`` bounds)."""
    delivered: int = 0
    dead_lettered: int = 0
    retries: int = 0
    """Failed delivery attempts that were tried again."""
    adopted_files: int = 0
    backend_up: bool = True
    last_error: str | None = None


class OutboxWriter:
    """Delivers the outbox files' records in order; see the module docstring."""

    def __init__(
        self,
        *,
        run: Callable[[Callable[[], Any]], Awaitable[Any]],
        store: _Store,
        backend: Backend,
        stats: OutboxStats,
        log: ContextLogger,
        retry_base: float,
        retry_max: float,
        deliver_timeout: float,
        max_attempts: int,
        sweep_interval: float | None,
        on_empty: Callable[[], None],
        on_adopted: Callable[[list[_Adoption]], int],
    ) -> None:
        self._run = run
        self._store = store
        self._backend = backend
        self._stats = stats
        self._log = log
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._deliver_timeout = deliver_timeout
        self._max_attempts = max_attempts
        self._sweep_interval = sweep_interval
        self._on_empty = on_empty
        self._on_adopted = on_adopted
        self._wake = asyncio.Event()  # new records, an adoption, or closing
        self._retry_now = asyncio.Event()  # cuts one backoff pause short (closing)
        self._delivered: list[tuple[_File, int, str]] = []  # to delete at the next round trip
        self._down_since: float | None = None
        self._outage_retries = 0
        self._told_credentials = False
        self._closing = False

    def wake(self) -> None:
        """There may be records to deliver."""
        self._wake.set()

    def finish(self) -> None:
        """Deliver what is left without waiting out a backoff, then stop."""
        self._closing = True
        self._wake.set()
        self._retry_now.set()

    def take_delivered(self) -> list[tuple[_File, int, str]]:
        """The delivered records not yet deleted from their files (for the last round trip)."""
        delivered, self._delivered = self._delivered, []
        return delivered

    async def run(self) -> None:
        """The delivery loop, until :meth:`finish` and nothing is left (or cancelled)."""
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
            self._on_empty()
            return False
        for seq, record, size in page.rows:
            await self._deliver(page.file, seq, record, size)
        return True

    async def _deliver(self, file: _File, seq: int, record: OutboxRecord, size: int) -> None:
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self._deliver_timeout):
                    await self._backend.deliver(record)
            except BackendError as exc:
                if not exc.retryable:
                    self._backend_answered()
                    await self._dead_letter(file, seq, record, size, _describe(exc))
                    return
                if exc.credentials_refused:
                    self._credentials_refused(exc)
                error: Exception = exc
                unexpected = False
            except (TimeoutError, OSError) as exc:  # the backend is slow or out of reach
                error, unexpected = exc, False
            except Exception as exc:
                # not the backend's answer: a bug in it, or a record it cannot take
                error, unexpected = exc, True
            else:
                self._backend_answered()
                self._delivered.append((file, seq, record.key))
                self._stats.delivered += 1
                self._stats.pending -= 1
                self._stats.pending_bytes -= size
                return
            attempt += 1
            if unexpected and attempt >= self._max_attempts:
                self._log.critical(
                    "record failed with an unexpected error at every attempt, moved to the "
                    "dead letters (replay it with `python -m clara_voice outbox replay`)",
                    extra={"key": record.key, "attempts": attempt, "error": _describe(error)},
                )
                await self._dead_letter(file, seq, record, size, _describe(error), told=True)
                return
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
        self,
        file: _File,
        seq: int,
        record: OutboxRecord,
        size: int,
        error: str,
        *,
        told: bool = False,
    ) -> None:
        await self._run(functools.partial(self._store.dead_letter, file, seq, record.key, error))
        self._stats.dead_lettered += 1
        self._stats.pending -= 1
        self._stats.pending_bytes -= size
        self._stats.last_error = error
        if not told:
            self._log.warning(
                "record refused by the backend, moved to the dead letters",
                extra={"key": record.key, "kind": record.kind, "error": error},
            )

    def _credentials_refused(self, exc: BackendError) -> None:
        # fixable: the records wait in the outbox; said once per streak, at the top level
        if self._told_credentials:
            return
        self._told_credentials = True
        self._log.critical(
            "the backend refuses the credentials: set CLARA_BACKEND_TOKEN to a token it "
            "accepts; records wait in the outbox until then",
            extra={"status": exc.status, "error": _describe(exc)},
        )

    def _backend_answered(self) -> None:
        self._told_credentials = False
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
            self._on_adopted(await self._run(self._store.sweep))


__all__ = ["OutboxStats", "OutboxWriter"]
