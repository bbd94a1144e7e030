"""The outbox's writer: one task delivering the committed records to the backend.

Records go out in the order they were put, one at a time: a failing backend is retried with
capped exponential backoff (``retry_base`` doubling up to ``retry_max``, with jitter), each
attempt bounded by ``deliver_timeout``, for as long as it takes: the backend is down or slow,
refuses the credentials (401/403: said once, critically, naming CLARA_BACKEND_TOKEN), or has
no such endpoint (404/405: said once, naming CLARA_BACKEND_URL), and the records wait.

No record can hold up the ones behind it. A record the backend refuses for good goes to the
dead letters at once. One that keeps failing otherwise (any error, retryable or not) becomes
*stuck* after ``max_attempts`` attempts, or once it is older than ``max_age`` seconds; then
the record after it is tried: if the backend takes that one, the stuck record is the
problem and goes to the dead letters, and delivery goes on; if the backend takes neither,
it is down for everyone, and every record waits (nothing is dead-lettered for an outage).
The same holds for the records of an adopted file. Dead letters are bounded: past
``max_dead_letters`` the oldest are dropped, said once, critically.

A delivered record is deleted at the next round trip to the file thread. When there is
nothing to deliver, the writer waits for work, sweeping the folder for the files of ended
processes every ``sweep_interval`` seconds. It is owned by
:class:`~clara_voice.persistence.outbox.Outbox`, which tells it when work arrives and when
to finish.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from clara_voice.logging import ContextLogger
from clara_voice.persistence._outbox_files import _Adoption, _File, _Pending, _Store
from clara_voice.persistence._outbox_schema import describe as _describe
from clara_voice.persistence.base import Backend, BackendError

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
    dead_letters_dropped: int = 0
    """The oldest dead letters dropped to keep them within their bound."""
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
        max_age: float | None = None,
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
        self._max_age = max_age
        self._sweep_interval = sweep_interval
        self._on_empty = on_empty
        self._on_adopted = on_adopted
        self._wake = asyncio.Event()  # new records, an adoption, or closing
        self._retry_now = asyncio.Event()  # cuts one backoff pause short (closing)
        self._delivered: list[tuple[_File, int, str]] = []  # to delete at the next round trip
        self._down_since: float | None = None
        self._outage_retries = 0
        self._told_credentials = False
        self._told_misconfigured = False
        self._told_dead_letters_full = False
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
        skip: set[tuple[int, int]] = set()  # records delivered out of turn (as probes)
        for index, pending in enumerate(page.rows):
            if (id(pending.file), pending.seq) in skip:
                continue
            after = page.rows[index + 1] if index + 1 < len(page.rows) else None
            probe = await self._deliver(pending, after)
            if probe is not None:
                skip.add((id(probe.file), probe.seq))
        return True

    async def _deliver(self, pending: _Pending, after: _Pending | None) -> _Pending | None:
        """Deliver ``pending`` (retrying as long as it takes), or dead-letter it; the
        record after it when that one was delivered first, as the probe of a stuck one."""
        record, attempt = pending.record, 0
        while True:
            outcome = await self._attempt(pending)
            if outcome is None:
                return None
            error, unexpected = outcome
            attempt += 1
            if self._stuck(pending, attempt):
                probe = after or await self._run(
                    functools.partial(self._store.after, pending.file, pending.seq)
                )
                # the backend takes the record behind it: unless it takes this one too now
                # (it just came back), this one is the problem and must not hold up the rest
                # (a backend down for all keeps them all)
                if probe is not None and await self._attempt(probe) is None:
                    if (again := await self._attempt(pending)) is None:
                        return probe if probe is after else None
                    error, unexpected = again
                    self._log.critical(
                        "record kept failing while the backend took the ones after it, moved "
                        "to the dead letters (replay it with `python -m clara_voice outbox "
                        "replay`)",
                        extra={
                            "key": record.key,
                            "attempts": attempt,
                            "age_s": round(time.time() - pending.created, 1),
                            "error": _describe(error),
                        },
                    )
                    await self._dead_letter(pending, _describe(error), told=True)
                    return probe if probe is after else None
            delay = self._backoff(attempt)
            self._stats.retries += 1
            self._stats.last_error = _describe(error)
            if self._down_since is None and not unexpected:
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

    def _stuck(self, pending: _Pending, attempts: int) -> bool:
        """Whether ``pending`` failed often enough, or long enough, to be moved aside if the
        backend takes the records after it."""
        if attempts >= self._max_attempts:
            return True
        return self._max_age is not None and time.time() - pending.created > self._max_age

    async def _attempt(self, pending: _Pending) -> tuple[Exception, bool] | None:
        """One delivery of ``pending``: ``None`` when it is done (delivered, or refused for
        good and dead-lettered), else the error and whether it was unexpected (not the
        backend's answer: a bug in it, or a record it cannot take)."""
        try:
            async with asyncio.timeout(self._deliver_timeout):
                await self._backend.deliver(pending.record)
        except BackendError as exc:
            if not exc.retryable:
                self._backend_answered()
                await self._dead_letter(pending, _describe(exc))
                return None
            if exc.credentials_refused:
                self._credentials_refused(exc)
            elif exc.misconfigured:
                self._misconfigured(exc)
            return exc, False
        except (TimeoutError, OSError) as exc:  # the backend is slow or out of reach
            return exc, False
        except Exception as exc:
            return exc, True
        self._backend_answered()
        self._delivered.append((pending.file, pending.seq, pending.record.key))
        self._stats.delivered += 1
        self._stats.pending -= 1
        self._stats.pending_bytes -= pending.size
        return None

    async def _forget_delivered(self) -> None:
        delivered, self._delivered = self._delivered, []
        try:
            await self._run(functools.partial(self._store.forget, delivered))
        except BaseException:
            self._delivered[:0] = delivered
            raise

    async def _dead_letter(self, pending: _Pending, error: str, *, told: bool = False) -> None:
        record = pending.record
        dropped = await self._run(
            functools.partial(self._store.dead_letter, pending.file, pending.seq, record.key, error)
        )
        self._stats.dead_lettered += 1
        self._stats.pending -= 1
        self._stats.pending_bytes -= pending.size
        self._stats.last_error = error
        if not told:
            self._log.warning(
                "record refused by the backend, moved to the dead letters",
                extra={"key": record.key, "kind": record.kind, "error": error},
            )
        if dropped:
            self._stats.dead_letters_dropped += dropped
            if not self._told_dead_letters_full:
                self._told_dead_letters_full = True
                self._log.critical(
                    "dead letters over CLARA_OUTBOX_MAX_DEAD_LETTERS: the oldest are dropped "
                    "(replay them with `python -m clara_voice outbox replay`, or raise it)",
                    extra={"dropped": dropped, "max_dead_letters": self._store.max_dead_letters},
                )

    def _misconfigured(self, exc: BackendError) -> None:
        # the URL is wrong (404/405 on a write): fixable, the records wait; said once
        if self._told_misconfigured:
            return
        self._told_misconfigured = True
        self._log.critical(
            "the backend has no such endpoint: check CLARA_BACKEND_URL (docs/backend-api.md); "
            "records wait in the outbox until then",
            extra={"status": exc.status, "error": _describe(exc)},
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
        self._told_misconfigured = False
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
