"""No record can jam the outbox: unexpected failures, refused credentials, a full disk budget.

Each test reproduces a defect found against the code before issue 11 (named in its
docstring) on real SQLite files with a scriptable backend.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from clara_voice.persistence.base import BackendError, OutboxRecord
from clara_voice.persistence.http import HttpBackend
from clara_voice.persistence.outbox import OutboxError
from testkit.loopback_backend import LoopbackBackend
from tests.persistence.test_outbox import (
    FakeBackend,
    drained,
    fast,
    in_order_but_the_head,
    rows,
    turn,
)

CRITICAL = logging.CRITICAL


class BuggyBackend(FakeBackend):
    """Raises a programming error (not a BackendError) for the keys in ``buggy``."""

    def __init__(self, buggy: set[str]) -> None:
        super().__init__()
        self.buggy = buggy
        self.attempts: dict[str, int] = {}

    async def deliver(self, record: OutboxRecord) -> None:
        self.attempts[record.key] = self.attempts.get(record.key, 0) + 1
        if record.key in self.buggy:
            self.calls += 1
            raise KeyError("conversation_id")  # a bug in the backend, not its answer
        await super().deliver(record)


class TokenBackend(FakeBackend):
    """Answers 401 until ``token_fixed`` is set (an operator fixing CLARA_BACKEND_TOKEN)."""

    token_fixed = False

    async def deliver(self, record: OutboxRecord) -> None:
        if not self.token_fixed:
            self.calls += 1
            async with self._changed:
                self._changed.notify_all()
            raise BackendError("401 unauthorized", retryable=True, status=401)
        await super().deliver(record)


def criticals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == CRITICAL]


async def test_an_unexpected_error_dead_letters_the_record_and_the_rest_flows(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect: a record whose delivery raised anything but a BackendError was retried
    without limit and blocked every record behind it."""
    caplog.set_level(logging.INFO, logger="clara_voice.persistence")
    backend = BuggyBackend({"turn:s1:1"})
    async with fast(data, backend, max_attempts=4) as outbox:
        for i in range(4):
            await outbox.put(turn("s1", i))
        await drained(outbox)
        assert outbox.path is not None
        assert rows(outbox.path, "dead_letters") == ["turn:s1:1"]
        assert outbox.stats.dead_lettered == 1
        assert outbox.pending_count() == 0
        assert outbox.stats.pending_bytes == 0

    assert backend.stored == ["turn:s1:0", "turn:s1:2", "turn:s1:3"]
    # four attempts, then one more once the record behind it went through
    assert backend.attempts["turn:s1:1"] == 5
    [line] = criticals(caplog)
    assert "dead letters" in line and "outbox replay" in line
    record = next(r for r in caplog.records if r.levelno == CRITICAL)
    assert record.key == "turn:s1:1"  # type: ignore[attr-defined]
    assert "KeyError" in record.error  # type: ignore[attr-defined]


async def test_a_slow_or_unreachable_backend_is_never_dead_lettered(data: Path) -> None:
    """The attempt limit is for bugs only: timeouts and connection errors keep the record
    (the backend being down is not the record's fault)."""
    backend = FakeBackend(mode="down")  # alternates 503 and ConnectionRefusedError
    async with fast(data, backend, max_attempts=2) as outbox:
        await outbox.put(turn("s1", 0))
        await backend.wait_until(lambda: backend.calls >= 12)
        assert outbox.stats.dead_lettered == 0
        assert outbox.pending_count() == 1
        backend.mode = "ok"
        await drained(outbox)
    assert backend.stored == ["turn:s1:0"]


async def test_refused_credentials_are_said_once_critically_and_the_records_wait(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect: 401/403 were retried forever with nothing above a warning to say the token
    is wrong."""
    caplog.set_level(logging.INFO, logger="clara_voice.persistence")
    backend = TokenBackend()
    async with fast(data, backend, max_attempts=2) as outbox:
        for i in range(3):
            await outbox.put(turn("s1", i))
        await backend.wait_until(lambda: backend.calls >= 20)
        assert outbox.pending_count() == 3  # retryable: never dead-lettered
        assert outbox.stats.dead_lettered == 0
        [line] = criticals(caplog)
        assert "CLARA_BACKEND_TOKEN" in line

        backend.token_fixed = True
        await drained(outbox)
        assert outbox.stats.dead_lettered == 0
    assert in_order_but_the_head(backend.stored, [turn("s1", i).key for i in range(3)])
    assert len(criticals(caplog)) == 1


async def test_a_full_outbox_keeps_the_oldest_and_refuses_new_records_loudly(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect: the backlog of a down backend grew on disk without bound."""
    caplog.set_level(logging.INFO, logger="clara_voice.persistence")
    backend = FakeBackend(mode="down")
    text = "x" * 100_000
    async with fast(data, backend, max_bytes=1 << 20) as outbox:
        accepted: list[str] = []
        refused: list[str] = []
        for i in range(15):
            errors: list[OutboxError] = []
            try:
                await outbox.put(turn("s1", i, text))
            except OutboxError as exc:
                errors.append(exc)
            (refused if errors else accepted).append(turn("s1", i).key)
            assert all(e.retryable and "full" in str(e) for e in errors)
        assert accepted == [turn("s1", i).key for i in range(len(accepted))]  # the oldest
        assert 8 <= len(accepted) <= 10
        assert refused  # and each refusal raised to its caller
        assert outbox.stats.pending_bytes <= 1 << 20
        [line] = criticals(caplog)  # once per streak, not once per record
        assert "CLARA_OUTBOX_MAX_BYTES" in line

        backend.mode = "ok"
        await drained(outbox)
        await outbox.put(turn("s2", 0, text))  # room again
        await drained(outbox)
    assert backend.stored == [*accepted, "turn:s2:0"]


async def test_a_full_outbox_counts_records_still_being_committed(data: Path) -> None:
    """Puts in one burst (before any commit) are bounded too."""
    backend = FakeBackend(mode="down")
    async with fast(data, backend, max_bytes=1 << 20) as outbox:
        futures = [outbox.put_nowait(turn("s1", i, "y" * 100_000)) for i in range(15)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        refused = [r for r in results if isinstance(r, OutboxError)]
        assert refused and len(refused) < 15
        assert all(r is None for r in results[: 15 - len(refused)])
        assert outbox.stats.pending_bytes <= 1 << 20


class FlakyBackend(FakeBackend):
    """Fails the keys in ``failing`` with ``error`` (a retryable one unless told), whatever
    it does with the others."""

    def __init__(self, failing: set[str], error: Exception | None = None) -> None:
        super().__init__()
        self.failing = failing
        self.error = error or BackendError("503 service unavailable", retryable=True, status=503)

    async def deliver(self, record: OutboxRecord) -> None:
        if record.key in self.failing:
            self.calls += 1
            async with self._changed:
                self._changed.notify_all()
            raise self.error
        await super().deliver(record)


async def test_a_record_failing_with_a_retryable_error_cannot_hold_up_the_rest(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression (issue 16, item 6): a record the backend failed with a 5xx every time was
    retried forever, and every record behind it waited."""
    caplog.set_level(logging.INFO, logger="clara_voice.persistence")
    backend = FlakyBackend({"turn:s1:0"})
    async with fast(data, backend, max_attempts=3) as outbox:
        for i in range(4):
            await outbox.put(turn("s1", i))
        await drained(outbox)
        assert outbox.path is not None
        assert rows(outbox.path, "dead_letters") == ["turn:s1:0"]
    assert backend.stored == ["turn:s1:1", "turn:s1:2", "turn:s1:3"]
    [line] = criticals(caplog)
    assert "took the ones after it" in line


async def test_a_record_failing_for_longer_than_its_age_bound_is_moved_aside(data: Path) -> None:
    """A record whose attempts each take long (timeouts) is moved aside by age, long before
    CLARA_OUTBOX_MAX_ATTEMPTS of them."""
    backend = FlakyBackend({"turn:s1:0"}, TimeoutError())
    async with fast(data, backend, max_attempts=1000, max_age=0.2) as outbox:
        for i in range(3):
            await outbox.put(turn("s1", i))
        await drained(outbox)
        assert outbox.stats.dead_lettered == 1
    assert backend.stored == ["turn:s1:1", "turn:s1:2"]


async def test_a_stuck_record_of_an_adopted_file_cannot_hold_up_the_adopters_own(
    data: Path,
) -> None:
    """The same rule after adoption: the stuck record is alone in the file of an ended
    process, and the records behind it are the adopting process's own."""
    async with fast(data, FakeBackend(mode="down"), flush_timeout=0.05) as first:
        await first.put(turn("old", 0))  # left behind when it closes
    backend = FlakyBackend({"turn:old:0"})
    async with fast(data, backend, max_attempts=2) as outbox:
        assert outbox.stats.adopted_files == 1
        await outbox.put(turn("new", 0))
        await drained(outbox)
        assert outbox.path is not None
        assert rows(outbox.path, "dead_letters") == ["turn:old:0"]
    assert backend.stored == ["turn:new:0"]


async def test_dead_letters_are_bounded_and_the_oldest_go_first(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression (issue 16, item 6): dead letters grew without bound on disk."""
    caplog.set_level(logging.INFO, logger="clara_voice.persistence")
    backend = FakeBackend()
    backend.refused = {turn("s1", i).key for i in range(5)}
    async with fast(data, backend, max_dead_letters=3) as outbox:
        for i in range(6):
            await outbox.put(turn("s1", i))
        await drained(outbox)
        assert outbox.path is not None
        assert rows(outbox.path, "dead_letters") == [turn("s1", i).key for i in (2, 3, 4)]
        assert outbox.stats.dead_letters_dropped == 2
    assert backend.stored == ["turn:s1:5"]
    [line] = criticals(caplog)  # once, not once per record dropped
    assert "CLARA_OUTBOX_MAX_DEAD_LETTERS" in line


async def test_a_wrong_backend_url_is_said_once_and_the_records_wait(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression (issue 16, item 6): a 404 from the backend's endpoints (a wrong
    CLARA_BACKEND_URL) dead-lettered every record, one warning each."""
    caplog.set_level(logging.INFO, logger="clara_voice.persistence")
    async with LoopbackBackend() as server:
        wrong = HttpBackend(server.base_url + "/v2", token=None)
        async with fast(data, wrong, max_attempts=2) as outbox:
            for i in range(3):
                await outbox.put(turn("s1", i))
            await server.wait_for(lambda: len(server.requests) >= 12, timeout=5)
            assert outbox.stats.dead_lettered == 0
            assert outbox.pending_count() == 3
        await wrong.aclose()
    [line] = criticals(caplog)
    assert "CLARA_BACKEND_URL" in line
