"""The Backend contract, kept by both stores of our own: the embedded SQLite file and a
real PostgreSQL server (started by the test harness).

Idempotent delivery by key, history per (conversation, participant) in the conversation's
order, the conversation confirmed or created, malformed records refused for good (the
same words from both stores), and a closed store refusing retryably.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clara_voice.persistence.base import BackendError, OutboxRecord, StoredMessage
from clara_voice.persistence.postgres import PostgresBackend
from clara_voice.persistence.sqlite import DB_FILENAME, SQLiteBackend
from testkit.postgres import query as pg_query
from testkit.tasks import other_tasks
from tests.persistence.records import participant_event, session_summary, sqlite_rows, turn


@dataclass
class Store:
    """A store under test, and a way to read its tables from outside it."""

    backend: SQLiteBackend | PostgresBackend
    rows: Callable[[str], Awaitable[list[tuple[Any, ...]]]]


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        path = tmp_path / "data" / DB_FILENAME
        async with SQLiteBackend(path) as sqlite_backend:
            yield Store(sqlite_backend, lambda sql: asyncio.to_thread(sqlite_rows, path, sql))
        return
    dsn = request.getfixturevalue("postgres_dsn")
    async with PostgresBackend(dsn) as pg_backend:
        yield Store(pg_backend, lambda sql: pg_query(dsn.get_secret_value(), sql))


async def test_delivery_is_idempotent_by_key(store: Store) -> None:
    for record in (turn(0), participant_event(), session_summary()):
        await store.backend.deliver(record)
        await store.backend.deliver(record)
    await store.backend.deliver(turn(0, text="a retry with other text"))

    assert await store.rows("SELECT record_key, text FROM messages") == [("turn:s1:0", "message 0")]
    assert await store.rows("SELECT count(*) FROM participant_events") == [(1,)]
    assert await store.rows("SELECT count(*) FROM sessions") == [(1,)]
    assert await store.rows("SELECT id, room FROM conversations") == [("c1", "room-1")]


async def test_recent_messages_are_the_last_ones_oldest_first(store: Store) -> None:
    for seq in (3, 0, 4, 1, 2):  # delivery order is not the conversation's order
        await store.backend.deliver(turn(seq))
    await store.backend.deliver(turn(0, conversation="other", session="s2"))

    recent = await store.backend.get_recent_messages("c1", 3, participant="alice")
    assert [m.text for m in recent] == ["message 2", "message 3", "message 4"]
    assert recent[0] == StoredMessage(
        role="user", text="message 2", at="2025-01-01T10:00:02.000000+00:00", participant="alice"
    )
    assert len(await store.backend.get_recent_messages("c1", 100, participant="alice")) == 5
    assert await store.backend.get_recent_messages("c1", 0, participant="alice") == []
    assert await store.backend.get_recent_messages("unknown", 5, participant="alice") == []


async def test_times_are_ordered_as_times_and_read_back_in_utc(store: Store) -> None:
    """An earlier instant written in a zone east of UTC sorts first, and reads back as UTC."""
    await store.backend.deliver(turn(0, at="2025-01-01T11:30:00+02:00"))  # 09:30 UTC
    await store.backend.deliver(turn(1, at="2025-01-01T10:00:00"))  # no zone: UTC
    recent = await store.backend.get_recent_messages("c1", 10, participant="alice")
    assert [(m.text, m.at) for m in recent] == [
        ("message 0", "2025-01-01T09:30:00.000000+00:00"),
        ("message 1", "2025-01-01T10:00:00.000000+00:00"),
    ]


async def test_history_is_per_participant(store: Store) -> None:
    """Regression (issue 16, critical 1): each participant's history in a conversation is
    its own; another's words are never loaded with it."""
    await store.backend.deliver(turn(0, text="alice's secret"))
    await store.backend.deliver(turn(0, session="s2", participant="bob", text="bob's question"))
    await store.backend.deliver(turn(1, session="s2", participant="bob", text="the answer to bob"))

    alice = await store.backend.get_recent_messages("c1", 10, participant="alice")
    bob = await store.backend.get_recent_messages("c1", 10, participant="bob")

    assert [m.text for m in alice] == ["alice's secret"]
    assert [m.text for m in bob] == ["bob's question", "the answer to bob"]
    assert {m.participant for m in bob} == {"bob"}
    assert await store.backend.get_recent_messages("c1", 10, participant="carol") == []


async def test_agent_joined_creates_or_confirms_the_conversation(store: Store) -> None:
    assert await store.backend.agent_joined(room="room-1", conversation_id="c1") == "c1"
    assert await store.backend.agent_joined(room="room-1", conversation_id="c1") == "c1"
    new = await store.backend.agent_joined(room="room-2", conversation_id="")
    assert new and new != "c1"
    assert sorted(await store.rows("SELECT id, room FROM conversations")) == sorted(
        [("c1", "room-1"), (new, "room-2")]
    )
    with pytest.raises(BackendError) as caught:
        await store.backend.agent_joined(room=None, conversation_id="c1")  # type: ignore[arg-type]
    assert not caught.value.retryable


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (turn(0, role="system"), "role must be 'user' or 'assistant'"),
        (turn(0, seq="zero"), "seq must be a non-negative integer"),
        (turn(0, seq=-1), "seq must be a non-negative integer"),
        (turn(0, at="yesterday"), "at is not an ISO 8601 time"),
        (turn(0, at="0001-01-01T00:00:00+05:00"), "at is not an ISO 8601 time"),
        (turn(0, text=None), "text must be a non-empty string"),
        (turn(0, metrics=[1, 2]), "metrics must be a JSON dict"),
        (OutboxRecord(key="turn:x", kind="turn", payload={"room": "r"}), "conversation_id is"),
        (participant_event("left"), "event must be 'connected' or 'disconnected'"),
        (
            OutboxRecord(key="k", kind="unknown", payload={"conversation_id": "c", "room": "r"}),  # type: ignore[arg-type]
            "unknown record kind",
        ),
    ],
    ids=["role", "seq", "negative", "at", "year-1", "text", "metrics", "missing", "event", "kind"],
)
async def test_a_malformed_record_is_refused_for_good(
    store: Store, record: OutboxRecord, problem: str
) -> None:
    with pytest.raises(BackendError, match=problem) as caught:
        await store.backend.deliver(record)
    assert not caught.value.retryable
    assert await store.rows("SELECT count(*) FROM messages") == [(0,)]


async def test_a_closed_store_refuses_retryably_and_leaves_no_task(store: Store) -> None:
    await store.backend.deliver(turn(0))
    await store.backend.aclose()
    await store.backend.aclose()
    assert not other_tasks()
    with pytest.raises(BackendError) as caught:
        await store.backend.deliver(turn(1))
    assert caught.value.retryable  # an outbox keeps the record for the next process
    assert await store.rows("SELECT count(*) FROM messages") == [(1,)]
