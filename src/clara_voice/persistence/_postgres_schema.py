"""The PostgreSQL store's schema and its versioned migrations.

Tables (the same layout as the SQLite store's, in PostgreSQL's types: times are
``timestamptz``, JSON is ``jsonb``, counters ``bigint``)::

    conversations       id PK, room, created_at, updated_at (last activity)
    messages            one turn message: record_key UNIQUE, conversation_id -> conversations,
                        room, session_id, participant, seq, role ('user'|'assistant'), text,
                        at, metrics; indexed in the order history is read: per
                        (conversation_id, participant), by (at, seq)
    participant_events  record_key UNIQUE, conversation_id, room, participant,
                        event ('connected'|'disconnected'), at, metadata
    sessions            session summary: record_key UNIQUE, session_id, conversation_id,
                        room, participant, message_count, participants, messages,
                        started_at, ended_at, duration_s, first_seq, last_seq
    clara_schema_migrations   one row per applied step: version PK, applied_at

Migrations. :data:`MIGRATIONS` is the ordered, append-only list of steps (step ``i`` takes
the database from version ``i`` to ``i + 1``; a released step is never edited). The
version is the highest row of ``clara_schema_migrations``. :func:`migrate` reads it
without a lock first (the common case, a database already current, costs one query);
when steps are missing it runs each in its own transaction that first takes the
transaction-scoped advisory lock :data:`LOCK_KEY`, then re-reads the version: several
workers starting together on an old database migrate it once, the others wait for the
lock and find nothing left to do. DDL is transactional in PostgreSQL, so a step that
fails leaves no half-made schema. A database newer than this build is refused, never
downgraded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from clara_voice.persistence.base import BackendError

LOCK_KEY = 1938431422419342756
"""``pg_advisory_xact_lock`` key of the migrations (the first 8 bytes of
sha256("clara_voice schema migrations"), signed): any other user of the database can
see who holds it in ``pg_locks``."""
VERSION_TABLE = "clara_schema_migrations"

Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
"""A connection, or a pool's proxy of one."""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the first schema (the SQLite store's version 4, in PostgreSQL's types)
    (
        """CREATE TABLE conversations (
            id text PRIMARY KEY,
            room text NOT NULL,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL
        )""",
        """CREATE TABLE messages (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            record_key text NOT NULL UNIQUE,
            conversation_id text NOT NULL REFERENCES conversations (id),
            room text NOT NULL,
            session_id text NOT NULL,
            participant text NOT NULL,
            seq bigint NOT NULL CHECK (seq >= 0),
            role text NOT NULL CHECK (role IN ('user', 'assistant')),
            text text NOT NULL,
            at timestamptz NOT NULL,
            metrics jsonb NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX messages_recent ON messages (conversation_id, participant, at, seq)",
        """CREATE TABLE participant_events (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            record_key text NOT NULL UNIQUE,
            conversation_id text NOT NULL REFERENCES conversations (id),
            room text NOT NULL,
            participant text NOT NULL,
            event text NOT NULL CHECK (event IN ('connected', 'disconnected')),
            at timestamptz NOT NULL,
            metadata jsonb NOT NULL DEFAULT 'null'
        )""",
        "CREATE INDEX participant_events_by_conversation ON participant_events (conversation_id)",
        """CREATE TABLE sessions (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            record_key text NOT NULL UNIQUE,
            session_id text NOT NULL,
            conversation_id text NOT NULL REFERENCES conversations (id),
            room text NOT NULL,
            participant text NOT NULL,
            message_count bigint NOT NULL CHECK (message_count >= 0),
            participants jsonb NOT NULL,
            messages jsonb NOT NULL,
            started_at timestamptz NOT NULL,
            ended_at timestamptz NOT NULL,
            duration_s double precision NOT NULL,
            first_seq bigint,
            last_seq bigint
        )""",
        "CREATE INDEX sessions_by_conversation ON sessions (conversation_id)",
    ),
)
"""Schema steps, oldest first: step ``i`` takes the database from version ``i`` to ``i + 1``."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The version this build creates and reads."""


class NewerSchemaError(BackendError):
    """The database was migrated by a newer build; this one must not touch it."""

    def __init__(self, version: int, known: int) -> None:
        super().__init__(
            f"the database's schema is at version {version}, newer than this build's "
            f"{known}: run the clara_voice that migrated it, or point CLARA_DATABASE_URL "
            "at another database",
            # the database, not a record, is at fault: an outbox keeps its records
            retryable=True,
        )
        self.version = version
        self.known = known


async def schema_version(conn: Connection) -> int:
    """The database's schema version (0: a database clara_voice never migrated)."""
    if not await conn.fetchval(f"SELECT to_regclass('{VERSION_TABLE}') IS NOT NULL"):
        return 0
    version = await conn.fetchval(f"SELECT max(version) FROM {VERSION_TABLE}")
    return int(version or 0)


async def applied_steps(conn: Connection) -> list[tuple[int, datetime]]:
    """Each applied step's version and when it was applied, oldest first."""
    if not await schema_version(conn):
        return []
    rows = await conn.fetch(f"SELECT version, applied_at FROM {VERSION_TABLE} ORDER BY version")
    return [(int(version), applied_at) for version, applied_at in rows]


async def migrate(conn: Connection, *, steps: tuple[tuple[str, ...], ...] = MIGRATIONS) -> int:
    """Apply the missing ``steps`` (now at version ``len(steps)``); returns the version the
    database had. Unbounded: the caller bounds it (a step may rebuild a big table)."""
    before = await schema_version(conn)
    if before > len(steps):
        raise NewerSchemaError(before, len(steps))
    for target in range(before + 1, len(steps) + 1):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} ("
                " version integer PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())",
            )
            # re-read under the lock: another worker may have migrated meanwhile
            current = await schema_version(conn)
            if current > len(steps):
                raise NewerSchemaError(current, len(steps))
            if current >= target:
                continue
            for statement in steps[target - 1]:
                await conn.execute(statement)
            await conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES ($1)", target)
    return before


__all__ = [
    "LOCK_KEY",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "VERSION_TABLE",
    "NewerSchemaError",
    "applied_steps",
    "migrate",
    "schema_version",
]
