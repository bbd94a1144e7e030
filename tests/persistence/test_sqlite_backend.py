"""The embedded SQLite store: schema and migrations, idempotent delivery, reads."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clara_voice.persistence.base import BackendError, OutboxRecord, StoredMessage
from clara_voice.persistence.sqlite import (
    DB_FILENAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    THREAD_NAME,
    SQLiteBackend,
)

# version 1 exactly as it first shipped, written out by hand (not taken from MIGRATIONS)
V1_SCHEMA = """
CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    room TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    record_key TEXT NOT NULL UNIQUE,
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    room TEXT NOT NULL,
    session_id TEXT NOT NULL,
    participant TEXT NOT NULL,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text TEXT NOT NULL,
    at TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metrics))
);
CREATE INDEX messages_by_conversation ON messages (conversation_id);
CREATE TABLE participant_events (
    id INTEGER PRIMARY KEY,
    record_key TEXT NOT NULL UNIQUE,
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    room TEXT NOT NULL,
    participant TEXT NOT NULL,
    event TEXT NOT NULL CHECK (event IN ('connected', 'disconnected')),
    at TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT 'null' CHECK (json_valid(metadata))
);
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY,
    record_key TEXT NOT NULL UNIQUE,
    session_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    room TEXT NOT NULL,
    participant TEXT NOT NULL,
    message_count INTEGER NOT NULL,
    participants TEXT NOT NULL CHECK (json_valid(participants)),
    messages TEXT NOT NULL CHECK (json_valid(messages)),
    started_at TEXT NOT NULL,
    ended_at TEXT NOT NULL,
    duration_s REAL NOT NULL
);
CREATE INDEX sessions_by_conversation ON sessions (conversation_id);
PRAGMA user_version = 1;
"""


def turn(
    seq: int, /, *, conversation: str = "c1", session: str = "s1", **changes: Any
) -> OutboxRecord:
    """A turn record; ``changes`` replace payload fields (``seq`` included)."""
    payload = {
        "conversation_id": conversation,
        "room": "room-1",
        "session_id": session,
        "participant": "alice",
        "seq": seq,
        "role": "user" if seq % 2 == 0 else "assistant",
        "text": f"message {seq}",
        "at": f"2025-01-01T10:00:{seq:02d}+00:00",
        "metrics": {"e2e_s": 0.8},
    } | changes
    return OutboxRecord(key=f"turn:{session}:{seq}", kind="turn", payload=payload)


def participant_event(event: str = "connected") -> OutboxRecord:
    return OutboxRecord(
        key=f"participant:c1:alice:{event}",
        kind="participant",
        payload={
            "conversation_id": "c1",
            "room": "room-1",
            "participant": "alice",
            "event": event,
            "at": "2025-01-01T10:00:00+00:00",
            "metadata": "",
        },
    )


def session_summary() -> OutboxRecord:
    return OutboxRecord(
        key="session:s1",
        kind="session",
        payload={
            "conversation_id": "c1",
            "room": "room-1",
            "session_id": "s1",
            "participant": "alice",
            "message_count": 2,
            "participants": [{"identity": "alice"}],
            "messages": [{"role": "user", "text": "hi"}],
            "started_at": "2025-01-01T10:00:00+00:00",
            "ended_at": "2025-01-01T10:05:00+00:00",
            "duration_s": 300.0,
        },
    )


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def schema(path: Path) -> dict[str, Any]:
    """Every table's columns and every index's columns: what a migration must converge to."""
    conn = sqlite3.connect(path)
    try:
        names = conn.execute(
            "SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchall()
        shape: dict[str, Any] = {}
        for kind, name, table in names:
            if kind == "table":
                shape[name] = [row[1:] for row in conn.execute(f"PRAGMA table_info({name})")]
            else:
                columns = [row[2] for row in conn.execute(f"PRAGMA index_info({name})")]
                shape[name] = (table, columns)
        return shape
    finally:
        conn.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / DB_FILENAME


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteBackend]:
    async with SQLiteBackend(db_path) as backend:
        yield backend


async def test_a_new_database_is_created_at_the_current_version(
    store: SQLiteBackend, db_path: Path
) -> None:
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 2
    assert query(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    tables = {name for (name,) in query(db_path, "SELECT name FROM sqlite_master")}
    assert {"conversations", "messages", "participant_events", "sessions"} <= tables


async def test_reopening_changes_nothing(db_path: Path) -> None:
    async with SQLiteBackend(db_path) as backend:
        await backend.deliver(turn(0))
    before = schema(db_path)
    async with SQLiteBackend(db_path) as backend:
        assert [
            m.text for m in await backend.get_recent_messages("c1", 10, participant="alice")
        ] == ["message 0"]
    assert schema(db_path) == before
    assert query(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_a_version_1_database_is_migrated(db_path: Path, tmp_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path)
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO conversations VALUES ('c1', 'room-1', '2025-01-01T09:00:00+00:00')")
    conn.execute(
        "INSERT INTO messages (record_key, conversation_id, room, session_id, participant, seq,"
        " role, text, at) VALUES ('turn:old:0', 'c1', 'room-1', 'old', 'alice', 0, 'user',"
        " 'from version 1', '2025-01-01T09:30:00.000000+00:00')"
    )
    conn.commit()
    conn.close()

    async with SQLiteBackend(db_path) as backend:
        await backend.deliver(turn(1))
        recent = await backend.get_recent_messages("c1", 10, participant="alice")

    assert query(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert [m.text for m in recent] == ["from version 1", "message 1"]
    # the backfilled column, then moved on by the new message
    assert query(db_path, "SELECT updated_at FROM conversations") == [
        ("2025-01-01T10:00:01.000000+00:00",)
    ]
    fresh = tmp_path / "fresh.db"
    async with SQLiteBackend(fresh) as backend:
        await backend.start()
    assert schema(db_path) == schema(fresh)


async def test_a_database_newer_than_the_build_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    backend = SQLiteBackend(db_path)
    with pytest.raises(BackendError, match="newer"):
        await backend.start()
    with pytest.raises(BackendError, match="newer") as caught:
        await backend.deliver(turn(0))
    assert caught.value.retryable  # the database's fault: the outbox keeps the record
    await backend.aclose()
    assert query(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]  # not touched


async def test_the_file_is_in_wal_mode(store: SQLiteBackend, db_path: Path) -> None:
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]


async def test_delivery_is_idempotent_by_key(store: SQLiteBackend, db_path: Path) -> None:
    for record in (turn(0), participant_event(), session_summary()):
        await store.deliver(record)
        await store.deliver(record)
    await store.deliver(turn(0, text="a retry with other text"))

    assert query(db_path, "SELECT record_key, text FROM messages") == [("turn:s1:0", "message 0")]
    assert query(db_path, "SELECT count(*) FROM participant_events") == [(1,)]
    assert query(db_path, "SELECT count(*) FROM sessions") == [(1,)]
    assert query(db_path, "SELECT id, room FROM conversations") == [("c1", "room-1")]


async def test_recent_messages_are_the_last_ones_oldest_first(store: SQLiteBackend) -> None:
    for seq in (3, 0, 4, 1, 2):  # delivery order is not the conversation's order
        await store.deliver(turn(seq))
    await store.deliver(turn(0, conversation="other", session="s2"))

    recent = await store.get_recent_messages("c1", 3, participant="alice")
    assert [m.text for m in recent] == ["message 2", "message 3", "message 4"]
    assert recent[0] == StoredMessage(
        role="user", text="message 2", at="2025-01-01T10:00:02.000000+00:00", participant="alice"
    )
    assert len(await store.get_recent_messages("c1", 100, participant="alice")) == 5
    assert await store.get_recent_messages("c1", 0, participant="alice") == []
    assert await store.get_recent_messages("unknown", 5, participant="alice") == []


async def test_history_is_per_participant(store: SQLiteBackend) -> None:
    """Regression (issue 16, critical 1): each participant's history in a conversation is
    its own; another's words are never loaded with it."""
    await store.deliver(turn(0, text="alice's secret"))
    await store.deliver(turn(0, session="s2", participant="bob", text="bob's question"))
    await store.deliver(turn(1, session="s2", participant="bob", text="the answer to bob"))

    alice = await store.get_recent_messages("c1", 10, participant="alice")
    bob = await store.get_recent_messages("c1", 10, participant="bob")

    assert [m.text for m in alice] == ["alice's secret"]
    assert [m.text for m in bob] == ["bob's question", "the answer to bob"]
    assert {m.participant for m in bob} == {"bob"}
    assert await store.get_recent_messages("c1", 10, participant="carol") == []


async def test_agent_joined_creates_or_confirms_the_conversation(
    store: SQLiteBackend, db_path: Path
) -> None:
    assert await store.agent_joined(room="room-1", conversation_id="c1") == "c1"
    assert await store.agent_joined(room="room-1", conversation_id="c1") == "c1"
    new = await store.agent_joined(room="room-2", conversation_id="")
    assert new and new != "c1"
    assert sorted(query(db_path, "SELECT id, room FROM conversations")) == sorted(
        [("c1", "room-1"), (new, "room-2")]
    )


@pytest.mark.parametrize(
    "record",
    [
        turn(0, role="system"),
        turn(0, seq="zero"),
        turn(0, at="yesterday"),
        turn(0, text=None),
        turn(0, metrics=[1, 2]),
        OutboxRecord(key="turn:x", kind="turn", payload={"room": "r"}),
        participant_event("left"),
        OutboxRecord(key="k", kind="unknown", payload={"conversation_id": "c", "room": "r"}),  # type: ignore[arg-type]
    ],
    ids=["role", "seq", "at", "text", "metrics", "missing", "event", "kind"],
)
async def test_a_malformed_record_is_refused_for_good(
    store: SQLiteBackend, db_path: Path, record: OutboxRecord
) -> None:
    with pytest.raises(BackendError) as caught:
        await store.deliver(record)
    assert not caught.value.retryable
    assert query(db_path, "SELECT count(*) FROM messages") == [(0,)]


async def test_aclose_is_idempotent_and_stops_the_thread(db_path: Path) -> None:
    backend = SQLiteBackend(db_path)
    await backend.deliver(turn(0))  # opens on first use
    await backend.aclose()
    await backend.aclose()
    assert not [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]
    with pytest.raises(BackendError) as caught:
        await backend.deliver(turn(1))
    assert caught.value.retryable  # an outbox keeps the record for the next process
