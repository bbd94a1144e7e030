"""A job process killed with SIGKILL loses no acknowledged record: the next one delivers it.

The first child (``tests/persistence/outbox_writer_proc.py``) puts turn records into an
outbox whose backend is down and prints each key once ``put`` returned; the test kills it
mid-stream, then an outbox of its own on the same data directory adopts the dead process's
file and delivers everything to a real store: the SQLite file, or a real PostgreSQL server.
The second child (``tests/agent/agent_proc.py``) runs a real ClaraVoiceAgent
mid-conversation, so the whole path (agent → recorder → outbox) is killed, and the next
job's agent delivers every acknowledged turn once. The last test is a fleet: two workers
with data directories of their own share one PostgreSQL, and a person's history follows
them from a worker that crashed to the other.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from pydantic import SecretStr

from clara_voice.persistence.base import OutboxRecord, StoredMessage
from clara_voice.persistence.outbox import Outbox
from clara_voice.persistence.postgres import PostgresBackend
from clara_voice.persistence.sqlite import DB_FILENAME, SQLiteBackend
from testkit.outbox import drained as outbox_drained
from testkit.postgres import query, until_rows
from tests.persistence.outbox_writer_proc import turn
from tests.persistence.records import sqlite_rows

REPO = Path(__file__).resolve().parents[2]
SESSIONS = 3
ACKS_BEFORE_KILL = 150


class CountingBackend:
    """A store that also records every delivery call, in order."""

    def __init__(self, inner: SQLiteBackend | PostgresBackend) -> None:
        self.inner = inner
        self.calls: list[str] = []

    async def agent_joined(self, *, room: str, conversation_id: str) -> str:
        return await self.inner.agent_joined(room=room, conversation_id=conversation_id)

    async def get_recent_messages(
        self, conversation_id: str, limit: int, *, participant: str
    ) -> list[StoredMessage]:
        return await self.inner.get_recent_messages(conversation_id, limit, participant=participant)

    async def deliver(self, record: OutboxRecord) -> None:
        await self.inner.deliver(record)
        self.calls.append(record.key)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def run_and_kill(
    data: Path,
    stderr_path: Path,
    *args: str,
    module: str = "tests.persistence.outbox_writer_proc",
    before_kill: Callable[[], Awaitable[None]] | None = None,
) -> list[str]:
    """Start the writer process, SIGKILL it after some acknowledgements (and, when given,
    once ``before_kill`` returned); every key it acknowledged, in the order it printed
    them."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            str(data),
            *args,
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    assert proc.stdout is not None
    acked: list[str] = []
    try:
        async with asyncio.timeout(20):
            while len(acked) < ACKS_BEFORE_KILL:
                line = await proc.stdout.readline()
                assert line, "the writer ended early (see its stderr file)"
                acked.append(line.decode().strip())
            if before_kill is not None:
                await before_kill()
    finally:
        proc.send_signal(signal.SIGKILL)  # mid-stream: puts are still being made
        async with asyncio.timeout(10):
            returncode = await proc.wait()
            rest = await proc.stdout.read()
    assert returncode == -signal.SIGKILL
    lines = rest.decode().split("\n")
    acked.extend(line for line in lines[:-1] if line)  # a cut last line was not acknowledged
    return acked


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_records_acknowledged_by_a_killed_process_are_delivered_once(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    data = tmp_path / "data"
    acked = await run_and_kill(data, tmp_path / "writer.stderr", str(SESSIONS), "100000")
    [orphan] = (data / "outbox").glob("*.db")  # the dead process's file, lock released

    store: SQLiteBackend | PostgresBackend
    if kind == "postgres":
        dsn: SecretStr = request.getfixturevalue("postgres_dsn")
        store = PostgresBackend(dsn)
        stored_keys = keys_in_postgres(dsn.get_secret_value())
    else:
        store = SQLiteBackend(tmp_path / "store" / DB_FILENAME)
        stored_keys = keys_in_sqlite(store.path)
    backend = CountingBackend(store)
    async with store, Outbox(data, backend, retry_base=0.01, retry_max=0.05) as outbox:
        async with asyncio.timeout(10):
            await outbox_drained(outbox)
        assert outbox.pending_count() == 0
        assert outbox.stats.adopted_files == 1
        assert not orphan.exists()

        # every acknowledged record arrived exactly once (plus any committed just before
        # the kill, whose key was not printed yet), each session's in its order
        calls = Counter(backend.calls)
        assert set(acked) <= set(calls)
        assert set(calls.values()) == {1}
        by_session: defaultdict[str, list[int]] = defaultdict(list)
        for key in backend.calls:
            _, session, seq = key.split(":")
            by_session[session].append(int(seq))
        for seqs in by_session.values():
            assert seqs == list(range(len(seqs)))  # in order, and no gap
        assert len(by_session) == SESSIONS

        recent = await store.get_recent_messages("conv-s0", 3, participant="user-s0")
        last = by_session["s0"][-1]
        assert [m.text for m in recent] == [f"s0 says {n}" for n in range(last - 2, last + 1)]

    assert await stored_keys() == set(calls)
    assert list((data / "outbox").iterdir()) == []  # the new outbox's own file, empty, removed


async def test_a_worker_killed_mid_conversation_loses_no_acknowledged_turn(
    tmp_path: Path,
) -> None:
    """The whole path: agent → recorder → outbox, killed; the next job delivers it all."""
    from clara_voice.agent.agent import ClaraVoiceAgent
    from clara_voice.config import load_settings
    from testkit.fakes import FakePipelineFactory, FakeRoom
    from tests.agent.agent_proc import CONVERSATION

    data = tmp_path / "data"
    acked = await run_and_kill(data, tmp_path / "agent.stderr", module="tests.agent.agent_proc")
    assert len({key.split(":")[1] for key in acked}) == 2  # both sessions were talking

    settings = load_settings(data_dir=data, outbox_retry_max=0.05)
    store = SQLiteBackend(data / DB_FILENAME)
    backend = CountingBackend(store)
    agent = ClaraVoiceAgent(FakeRoom(), settings, pipeline=FakePipelineFactory(), backend=backend)
    await agent.start()
    assert agent.conversation.recorder is not None
    async with asyncio.timeout(15):
        await outbox_drained(agent.conversation.recorder.outbox)
    await agent.aclose()

    delivered = Counter(key for key in backend.calls if key.startswith("turn:"))
    assert set(acked) <= set(delivered)  # every acknowledged turn arrived
    assert set(delivered.values()) == {1}  # exactly once
    store = SQLiteBackend(data / DB_FILENAME)
    for identity in ("alice", "bob"):
        stored = await store.get_recent_messages(CONVERSATION, 100_000, participant=identity)
        texts = [m.text for m in stored]
        assert texts == [f"{identity} {n}" for n in range(len(texts))]  # in order, no gap
    await store.aclose()


def keys_in_sqlite(path: Path) -> Callable[[], Awaitable[set[str]]]:
    """Every turn's key in the SQLite store, read from outside it."""

    async def keys() -> set[str]:
        rows = await asyncio.to_thread(sqlite_rows, path, "SELECT record_key FROM messages")
        return {str(key) for (key,) in rows}

    return keys


def keys_in_postgres(url: str) -> Callable[[], Awaitable[set[str]]]:
    """Every turn's key in the PostgreSQL store, read from outside it."""

    async def keys() -> set[str]:
        return {str(key) for (key,) in await query(url, "SELECT record_key FROM messages")}

    return keys


async def test_a_persons_history_follows_them_across_workers_and_a_crash(
    tmp_path: Path, postgres_dsn: SecretStr
) -> None:
    """Worker A (a process with its own data directory) talks with a person and delivers
    to PostgreSQL as it goes, until it is killed. Worker B, elsewhere, serves the person's
    next session: it loads the history A delivered, in order, and continues it. When A's
    machine starts again, its outbox delivers what was acknowledged but not yet delivered:
    the person's history holds every acknowledged turn, once, then B's."""
    url = postgres_dsn.get_secret_value()
    worker_a, worker_b = tmp_path / "worker-a", tmp_path / "worker-b"

    async def some_delivered() -> None:  # the crash comes after A delivered some turns
        await until_rows(url, "SELECT 1 FROM messages LIMIT 1", what="A's first delivery")

    acked = await run_and_kill(
        worker_a, tmp_path / "a.stderr", "1", "100000", url, before_kill=some_delivered
    )
    said_on_a = [f"s0 says {n}" for n in range(len(acked))]

    async with PostgresBackend(postgres_dsn) as store_b:
        history = [
            m.text
            for m in await store_b.get_recent_messages("conv-s0", 1000, participant="user-s0")
        ]
        assert history and history == said_on_a[: len(history)]  # in order, no gap
        async with Outbox(worker_b, store_b, retry_base=0.01, retry_max=0.05) as outbox_b:
            for seq in range(2):  # the next session, an hour later, on worker B
                later = turn("b1", seq).payload | {
                    "conversation_id": "conv-s0",
                    "participant": "user-s0",
                    "text": f"on B {seq}",
                    "at": f"2025-01-01T11:00:0{seq}+00:00",
                }
                await outbox_b.put(OutboxRecord(key=f"turn:b1:{seq}", kind="turn", payload=later))
            async with asyncio.timeout(10):
                await outbox_drained(outbox_b)

    async with (
        PostgresBackend(postgres_dsn) as store_a,
        Outbox(worker_a, store_a, retry_base=0.01, retry_max=0.05) as outbox_a,
    ):
        async with asyncio.timeout(20):
            await outbox_drained(outbox_a)
        assert outbox_a.stats.adopted_files == 1
        final = await store_a.get_recent_messages("conv-s0", 100_000, participant="user-s0")
    texts = [m.text for m in final]
    assert texts[-2:] == ["on B 0", "on B 1"]
    on_a = texts[:-2]
    assert on_a == [f"s0 says {n}" for n in range(len(on_a))]  # in order, no gap, once each
    assert len(on_a) >= len(acked)  # every acknowledged turn (and any committed unprinted)
