"""The durable outbox on real SQLite files, with a scriptable fake backend."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import pytest

from clara_voice.persistence.base import Backend, BackendError, OutboxRecord, StoredMessage
from clara_voice.persistence.outbox import THREAD_NAME, Outbox, OutboxError
from testkit.outbox import adopt_orphans
from testkit.outbox import drained as outbox_drained
from testkit.tasks import other_tasks

Mode = Literal["ok", "down", "hang"]
FAST_RETRY = 0.005


class FakeBackend:
    """Records what it stored; can be told to be down (retryable), hang, or refuse keys."""

    def __init__(self, *, mode: Mode = "ok", delay: float = 0.0) -> None:
        self.mode: Mode = mode
        self.delay = delay
        self.refused: set[str] = set()
        self.stored: list[str] = []
        self.calls = 0
        self._changed = asyncio.Condition()

    async def agent_joined(self, *, room: str, conversation_id: str) -> str:
        return conversation_id

    async def get_recent_messages(
        self, conversation_id: str, limit: int, *, participant: str
    ) -> list[StoredMessage]:
        return []

    async def deliver(self, record: OutboxRecord) -> None:
        self.calls += 1
        try:
            if self.mode == "hang":
                await asyncio.Event().wait()
            if self.mode == "down":
                # both shapes a backend fails in: its own error and a raw connection error
                if self.calls % 2:
                    raise BackendError("503 service unavailable", retryable=True)
                raise ConnectionRefusedError("connection refused")
            if record.key in self.refused:
                raise BackendError("422 unprocessable", retryable=False)
            if self.delay:
                await asyncio.sleep(self.delay)
            self.stored.append(record.key)
        finally:
            async with self._changed:
                self._changed.notify_all()

    async def aclose(self) -> None:
        pass

    async def wait_until(self, check: Callable[[], bool], *, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(check)


def turn(session: str, seq: int, text: str = "hello") -> OutboxRecord:
    return OutboxRecord(
        key=f"turn:{session}:{seq}",
        kind="turn",
        payload={
            "conversation_id": "c1",
            "room": "room-1",
            "session_id": session,
            "participant": "alice",
            "seq": seq,
            "role": "user" if seq % 2 == 0 else "assistant",
            "text": text,
            "at": f"2025-01-01T00:00:{seq % 60:02d}+00:00",
            "metrics": {},
        },
    )


def rows(path: Path, table: str = "records") -> list[str]:
    """Keys in ``table`` of an outbox file, read through a connection of the test's own."""
    conn = sqlite3.connect(path)
    try:
        column = "seq" if table == "records" else "rowid"
        return [k for (k,) in conn.execute(f"SELECT key FROM {table} ORDER BY {column}")]
    finally:
        conn.close()


def fast(directory: Path, backend: Backend, **options: Any) -> Outbox:
    """An outbox retrying every few milliseconds."""
    return Outbox(directory, backend, retry_base=FAST_RETRY, retry_max=4 * FAST_RETRY, **options)


def in_order_but_the_head(stored: list[str], keys: list[str]) -> bool:
    """Every key once, in order, but that the head may come right after the record behind
    it: a stuck head is tried again after its successor when the backend comes back
    (persistence/_outbox_writer.py), and the backend may answer both."""
    return stored == keys or stored == [keys[1], keys[0], *keys[2:]]


def outbox_files(directory: Path) -> list[Path]:
    return sorted((directory / "outbox").glob("*.db"))


async def drained(outbox: Outbox, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        await outbox_drained(outbox)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def outbox(data: Path, backend: FakeBackend) -> AsyncIterator[Outbox]:
    async with fast(data, backend) as outbox:
        yield outbox


async def test_records_are_delivered_in_order_and_then_deleted(
    outbox: Outbox, backend: FakeBackend
) -> None:
    keys = [turn("s1", i).key for i in range(250)]
    for i in range(250):
        outbox.put_nowait(turn("s1", i))
    await drained(outbox)

    assert backend.stored == keys
    assert outbox.pending_count() == 0
    assert outbox.stats.delivered == 250
    assert outbox.path is not None
    assert rows(outbox.path) == []


async def test_put_returns_only_once_the_record_is_committed(
    data: Path, backend: FakeBackend
) -> None:
    backend.mode = "hang"  # nothing leaves the file during the test
    async with fast(data, backend, flush_timeout=0.05) as outbox:
        assert outbox.path is not None
        await outbox.put(turn("s1", 0))
        assert rows(outbox.path) == ["turn:s1:0"]  # visible to another connection

        # while another connection holds the write lock, the commit cannot happen...
        blocker = sqlite3.connect(outbox.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        put = asyncio.create_task(outbox.put(turn("s1", 1)))
        done, _ = await asyncio.wait({put}, timeout=0.3)
        assert not done  # ...so put has not returned
        blocker.execute("ROLLBACK")
        blocker.close()
        async with asyncio.timeout(5):
            await put
        assert rows(outbox.path) == ["turn:s1:0", "turn:s1:1"]
        assert outbox.pending_count() == 2


async def test_a_key_put_twice_is_stored_and_delivered_once(
    data: Path, backend: FakeBackend
) -> None:
    backend.mode = "down"
    async with fast(data, backend) as outbox:
        assert outbox.path is not None
        await outbox.put(turn("s1", 0, "first"))
        await asyncio.gather(outbox.put(turn("s1", 0, "again")), outbox.put(turn("s1", 1)))
        assert rows(outbox.path) == ["turn:s1:0", "turn:s1:1"]
        assert outbox.pending_count() == 2

        backend.mode = "ok"
        await drained(outbox)
    assert backend.stored == ["turn:s1:0", "turn:s1:1"]


async def test_a_long_outage_loses_nothing_and_keeps_the_order(
    data: Path, backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clara_voice.persistence.outbox")
    backend.mode = "down"
    async with fast(data, backend) as outbox:
        for i in range(20):
            await outbox.put(turn("s1", i))
        await backend.wait_until(lambda: backend.calls >= 30)  # many retries of the head
        for i in range(20, 40):
            await outbox.put(turn("s1", i))
        assert outbox.pending_count() == 40
        assert not outbox.stats.backend_up
        assert outbox.stats.last_error is not None

        backend.mode = "ok"
        await drained(outbox)

        assert outbox.stats.dead_lettered == 0  # an outage is nobody's record's fault
        assert in_order_but_the_head(backend.stored, [turn("s1", i).key for i in range(40)])
        # past CLARA_OUTBOX_MAX_ATTEMPTS, every other call is a try of the record behind the
        # head (was the head the problem?), which fails too: the backend is down for all
        assert outbox.stats.retries >= 20
        assert outbox.stats.backend_up

    messages = [r.getMessage() for r in caplog.records]
    # one line per state change, not one per retry
    assert messages.count("backend down, records kept in the outbox") == 1
    assert messages.count("backend recovered, delivering the outbox") == 1


async def test_a_refused_record_is_dead_lettered_and_the_queue_moves_on(
    outbox: Outbox, backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend.refused = {"turn:s1:3"}
    for i in range(6):
        await outbox.put(turn("s1", i))
    await drained(outbox)

    assert backend.stored == [turn("s1", i).key for i in (0, 1, 2, 4, 5)]
    assert outbox.stats.dead_lettered == 1
    assert outbox.path is not None
    assert rows(outbox.path, "dead_letters") == ["turn:s1:3"]
    conn = sqlite3.connect(outbox.path)
    (error,) = conn.execute("SELECT error FROM dead_letters").fetchone()
    conn.close()
    assert "422" in error
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "record refused by the backend, moved to the dead letters"
    ]
    assert warnings[0].key == "turn:s1:3"  # type: ignore[attr-defined]


async def test_dead_letters_survive_the_process_and_move_to_the_adopter(
    data: Path, backend: FakeBackend
) -> None:
    backend.refused = {"turn:s1:0"}
    async with fast(data, backend) as first:
        await first.put(turn("s1", 0))
        await drained(first)
    [kept] = outbox_files(data)  # not deleted: it holds a dead letter

    async with fast(data, FakeBackend()) as second:
        await drained(second)
        assert second.path is not None
        assert not kept.exists()
        assert rows(second.path, "dead_letters") == ["turn:s1:0"]


async def test_aclose_flushes_within_its_bound_and_leaves_the_rest_in_the_file(
    data: Path,
) -> None:
    slow = FakeBackend(delay=0.02)
    outbox = fast(data, slow, flush_timeout=0.3)
    await outbox.start()
    keys = [turn("s1", i).key for i in range(100)]
    for i in range(100):
        await outbox.put(turn("s1", i))
    path = outbox.path
    assert path is not None

    started = time.monotonic()
    await outbox.aclose()
    assert time.monotonic() - started < 1.5
    assert 0 < len(slow.stored) < 100
    left = rows(path)
    assert slow.stored + left == keys  # every record either delivered or in the file
    assert outbox.pending_count() == len(left)

    # the next process delivers the rest, once, in order
    fresh = FakeBackend()
    async with fast(data, fresh) as adopter:
        await drained(adopter)
        assert adopter.stats.adopted_files == 1
    assert fresh.stored == left
    assert not path.exists()
    assert list((data / "outbox").iterdir()) == []


async def test_aclose_with_a_hanging_backend_returns_in_time(data: Path) -> None:
    outbox = fast(data, FakeBackend(mode="hang"), flush_timeout=0.2)
    await outbox.start()
    await outbox.put(turn("s1", 0))
    path = outbox.path
    assert path is not None

    started = time.monotonic()
    async with asyncio.timeout(2):
        await outbox.aclose()
    assert time.monotonic() - started < 1.0
    assert rows(path) == ["turn:s1:0"]
    assert outbox.pending_count() == 1


async def test_a_new_outbox_adopts_the_files_left_behind(data: Path) -> None:
    for session in ("a", "b"):
        async with fast(data, FakeBackend(mode="down"), flush_timeout=0) as old:
            for i in range(5):
                await old.put(turn(session, i))
    assert len(outbox_files(data)) == 2

    backend = FakeBackend()
    async with fast(data, backend) as outbox:
        await outbox.put(turn("c", 0))
        await drained(outbox)
        assert outbox.stats.adopted_files == 2
        assert outbox_files(data) == [outbox.path]

    assert sorted(backend.stored) == sorted(
        [turn(s, i).key for s in ("a", "b") for i in range(5)] + ["turn:c:0"]
    )
    for session in ("a", "b", "c"):  # each file's order is kept
        mine = [k for k in backend.stored if k.startswith(f"turn:{session}:")]
        assert mine == sorted(mine, key=lambda k: int(k.rsplit(":", 1)[1]))
    assert backend.stored[-1] == "turn:c:0"  # adopted files go first
    assert outbox_files(data) == []  # an empty file is deleted at close


async def test_a_live_outbox_file_is_not_taken_by_another(data: Path) -> None:
    down = FakeBackend(mode="down")
    live = fast(data, down, flush_timeout=0.05)
    await live.start()
    for i in range(5):
        await live.put(turn("live", i))

    other_backend = FakeBackend()
    async with fast(data, other_backend) as other:
        assert await adopt_orphans(other) == 0
        await drained(other)
        assert other_backend.stored == []
        assert other.stats.adopted_files == 0
        assert live.path is not None and live.path.exists()
        assert live.pending_count() == 5

        await live.aclose()  # the lock is released, the records stay
        assert await adopt_orphans(other) == 5
        await drained(other)
        assert other_backend.stored == [turn("live", i).key for i in range(5)]


async def test_an_idle_outbox_adopts_files_left_after_its_start(data: Path) -> None:
    backend = FakeBackend()
    async with fast(data, backend, sweep_interval=0.05) as outbox:
        async with fast(data, FakeBackend(mode="down"), flush_timeout=0) as old:
            await old.put(turn("late", 0))
        await backend.wait_until(lambda: backend.stored == ["turn:late:0"])
        assert outbox.stats.adopted_files == 1


async def test_the_event_loop_is_never_blocked(outbox: Outbox, backend: FakeBackend) -> None:
    """A behaviour bound, not a benchmark: all SQLite work happens off the loop."""
    lags: list[float] = []

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - before - 0.005)

    ticking = asyncio.create_task(ticker())
    try:
        acks: list[asyncio.Future[None]] = []
        for i in range(2000):  # in bursts, as room events and turns arrive
            acks.append(outbox.put_nowait(turn("s1", i, "x" * 2000)))
            if i % 50 == 49:
                await asyncio.sleep(0)
        async with asyncio.timeout(15):
            await asyncio.gather(*acks)
        await drained(outbox, timeout=15)
    finally:
        ticking.cancel()
        await asyncio.gather(ticking, return_exceptions=True)
    assert len(backend.stored) == 2000
    assert lags and max(lags) < 0.25


async def test_aclose_twice_is_safe_and_leaves_nothing_running(data: Path) -> None:
    threads_before = set(threading.enumerate())
    outbox = Outbox(data, FakeBackend())
    await outbox.start()
    await outbox.put(turn("s1", 0))
    await asyncio.gather(outbox.aclose(), outbox.aclose())
    await outbox.aclose()

    assert other_tasks() == set()
    assert not [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]
    assert set(threading.enumerate()) <= threads_before
    with pytest.raises(OutboxError, match="closed"):
        await outbox.put(turn("s1", 1))


async def test_bad_records_are_refused_at_put(outbox: Outbox) -> None:
    with pytest.raises(OutboxError, match="kind"):
        await outbox.put(OutboxRecord(key="k", kind="nope", payload={}))  # type: ignore[arg-type]
    with pytest.raises(OutboxError, match=r"JSON|serializable"):
        await outbox.put(OutboxRecord(key="k", kind="turn", payload={"x": object()}))
    assert outbox.pending_count() == 0


async def test_put_before_start_fails() -> None:
    outbox = Outbox(Path("data"), FakeBackend())
    with pytest.raises(OutboxError, match="not started"):
        await outbox.put(turn("s1", 0))
    await outbox.aclose()
