"""The embedded SQLite store: its schema and migrations, WAL mode, its thread. The Backend
contract both stores keep is in test_store_contract.py."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clara_voice.persistence.base import BackendError
from clara_voice.persistence.sqlite import (
    DB_FILENAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    THREAD_NAME,
    SQLiteBackend,
)
from tests.persistence.records import sqlite_rows as query
from tests.persistence.records import turn

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


async def test_aclose_is_idempotent_and_stops_the_thread(db_path: Path) -> None:
    backend = SQLiteBackend(db_path)
    await backend.deliver(turn(0))  # opens on first use
    await backend.aclose()
    await backend.aclose()
    assert not [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]
    with pytest.raises(BackendError) as caught:
        await backend.deliver(turn(1))
    assert caught.value.retryable  # an outbox keeps the record for the next process
