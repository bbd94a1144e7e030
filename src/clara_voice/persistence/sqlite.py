"""The embedded default store: conversations in one SQLite file (seed 004).

``SQLiteBackend(path)`` implements :class:`~clara_voice.persistence.base.Backend` on a local
file, by default ``./data/clara.db`` (the caller passes ``settings.data_dir / DB_FILENAME``).
Every job process of the worker opens the same file; SQLite's own locking serializes
their writes (WAL mode: readers never wait for the writer).

Schema (version :data:`SCHEMA_VERSION`; JSON columns are checked with ``json_valid``)::

    conversations       id PK, room, created_at, updated_at (last activity)
    messages            one turn message: record_key UNIQUE, conversation_id -> conversations,
                        room, session_id, participant, seq, role ('user'|'assistant'),
                        text, at, metrics JSON; read per (conversation_id, participant):
                        each participant's history is its own
    participant_events  record_key UNIQUE, conversation_id, room, participant,
                        event ('connected'|'disconnected'), at, metadata JSON
    sessions            session summary: record_key UNIQUE, session_id, conversation_id,
                        room, participant, message_count, participants JSON,
                        messages JSON, started_at, ended_at, duration_s

Times are ISO 8601 in UTC (``+00:00``), normalized on the way in so they sort as text.

Migrations. ``PRAGMA user_version`` is the schema version; :data:`MIGRATIONS` is the
ordered list of steps, step ``i`` taking a database from version ``i`` to ``i + 1``. A
new database runs them all, an older one the missing ones, each in its own transaction
that re-reads the version first (two processes opening an old file at once migrate it
once). A file newer than this build is refused, never downgraded. Steps are append-only:
a released step is never edited.

Durability: WAL with ``synchronous=FULL``. The outbox deletes a record once ``deliver``
returns, so the store's commit must be on disk by then, or a power loss would lose it.

Idempotency: each row keeps its outbox ``record_key`` (UNIQUE) and is inserted with
``ON CONFLICT (record_key) DO NOTHING``: a second delivery of a key is a success that
stores nothing. (Not ``INSERT OR IGNORE``: that would also silently drop a row breaking a
CHECK or NOT NULL constraint.)

All I/O runs on one thread owned by the backend, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from clara_voice._lifecycle import AsyncService
from clara_voice.logging import get_logger
from clara_voice.persistence._records import Row, check_names, insert_sql, iso, now, parse
from clara_voice.persistence._sqlite_tx import transaction
from clara_voice.persistence.base import BackendError, OutboxRecord, StoredMessage

DB_FILENAME = "clara.db"
"""The store's file name in the data directory."""
DEFAULT_PATH = Path("data") / DB_FILENAME
THREAD_NAME = "clara-sqlite"
"""Name prefix of the backend's I/O thread."""
_BUSY_TIMEOUT = 5.0  # seconds to wait for another process's write lock

log = get_logger("clara_voice.persistence.sqlite")

T = TypeVar("T")

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the first schema
    (
        """CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            room TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE messages (
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
        )""",
        "CREATE INDEX messages_by_conversation ON messages (conversation_id)",
        """CREATE TABLE participant_events (
            id INTEGER PRIMARY KEY,
            record_key TEXT NOT NULL UNIQUE,
            conversation_id TEXT NOT NULL REFERENCES conversations (id),
            room TEXT NOT NULL,
            participant TEXT NOT NULL,
            event TEXT NOT NULL CHECK (event IN ('connected', 'disconnected')),
            at TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT 'null' CHECK (json_valid(metadata))
        )""",
        """CREATE TABLE sessions (
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
        )""",
        "CREATE INDEX sessions_by_conversation ON sessions (conversation_id)",
    ),
    # 2: conversations.updated_at (last activity, backfilled); messages indexed in the
    #    order get_recent_messages reads them
    (
        "ALTER TABLE conversations ADD COLUMN updated_at TEXT",
        """UPDATE conversations SET updated_at = coalesce(
            (SELECT max(at) FROM messages WHERE conversation_id = conversations.id),
            created_at)""",
        "DROP INDEX messages_by_conversation",
        "CREATE INDEX messages_recent ON messages (conversation_id, at, seq)",
    ),
    # 3: a session summary names the range of its turns (its messages are the last few only)
    (
        "ALTER TABLE sessions ADD COLUMN first_seq INTEGER",
        "ALTER TABLE sessions ADD COLUMN last_seq INTEGER",
    ),
    # 4: history is per participant per conversation: messages indexed in the order
    #    get_recent_messages reads one participant's
    (
        "DROP INDEX messages_recent",
        "CREATE INDEX messages_recent ON messages (conversation_id, participant, at, seq)",
    ),
)
"""Schema steps, oldest first: step ``i`` takes the database from version ``i`` to ``i + 1``."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The version this build creates and reads."""


class SQLiteBackend(AsyncService):
    """The embedded conversation store on the SQLite file ``path`` (created if missing)."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path).absolute()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
        self._conn: sqlite3.Connection | None = None  # used only on the thread
        self._used = False
        self._closed = False

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    async def start(self) -> None:
        """Open the file and bring its schema up to date; calls open it when not started."""
        await self._call(lambda: None)

    async def agent_joined(self, *, room: str, conversation_id: str) -> str:
        """Create or confirm the conversation row; an empty id gets a new one."""
        check_names(room, conversation_id)
        conversation = conversation_id or uuid.uuid4().hex
        await self._call(functools.partial(self._db_touch, conversation, room, iso(now())))
        return conversation

    async def get_recent_messages(
        self, conversation_id: str, limit: int, *, participant: str
    ) -> list[StoredMessage]:
        """The last ``limit`` messages of ``participant``'s history in a conversation,
        oldest first."""
        if limit <= 0:
            return []
        return await self._call(
            functools.partial(self._db_recent, conversation_id, participant, limit)
        )

    async def deliver(self, record: OutboxRecord) -> None:
        """Store one record; a key already stored is success. Malformed: not retryable."""
        row = parse(record)
        await self._call(functools.partial(self._db_insert, row))

    async def aclose(self) -> None:
        """Close the file and stop the thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self._used:
            self._executor.shutdown(wait=False)  # never started a thread
            return
        try:
            await asyncio.shield(asyncio.wrap_future(self._executor.submit(self._db_close)))
        finally:
            self._executor.shutdown(wait=True)  # the last job has ended: the thread is idle

    async def _call(self, job: Callable[[], T]) -> T:
        if self._closed:
            # retryable: a record an outbox still holds must not be refused for good
            raise BackendError("the sqlite backend is closed", retryable=True)
        self._used = True
        future = asyncio.wrap_future(self._executor.submit(self._db_guarded, job))
        return await asyncio.shield(future)

    # -- on the thread ---------------------------------------------------------------------

    def _db_guarded(self, job: Callable[[], T]) -> T:
        # errors are translated here, at the boundary: callers see BackendError only
        try:
            if self._conn is None:
                try:
                    self._conn = _open(self._path)
                except BackendError as exc:
                    # the database, not the record, is at fault (a newer schema, no WAL):
                    # retryable, so an outbox keeps its records until someone fixes it
                    raise BackendError(str(exc), retryable=True) from exc
            return job()
        except BackendError:
            raise
        except sqlite3.IntegrityError as exc:
            raise BackendError(f"sqlite refused the row: {exc}", retryable=False) from exc
        except (sqlite3.Error, OSError) as exc:
            raise BackendError(f"sqlite: {exc}", retryable=True) from exc

    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    def _db_close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _db_touch(self, conversation_id: str, room: str, at: str) -> None:
        with transaction(self._db()):
            _touch(self._db(), conversation_id, room, at)

    def _db_insert(self, row: Row) -> None:
        conn = self._db()
        values = tuple(iso(v) if isinstance(v, datetime) else v for v in row.values)
        with transaction(conn):
            _touch(conn, row.conversation_id, row.room, iso(row.at))
            conn.execute(insert_sql(row, lambda _: "?"), values)

    def _db_recent(self, conversation_id: str, participant: str, limit: int) -> list[StoredMessage]:
        rows = (
            self._db()
            .execute(
                "SELECT role, text, at FROM messages WHERE conversation_id = ? AND participant = ?"
                " ORDER BY at DESC, seq DESC, id DESC LIMIT ?",
                (conversation_id, participant, limit),
            )
            .fetchall()
        )
        return [
            StoredMessage(role=role, text=text, at=at, participant=participant)
            for role, text, at in reversed(rows)
        ]


def _open(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # private from the start; -wal/-shm copy it
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    conn = sqlite3.connect(path, isolation_level=None, timeout=_BUSY_TIMEOUT)
    try:
        (journal,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if journal != "wal":
            raise BackendError(f"{path} cannot use WAL mode ({journal})", retryable=False)
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        before = migrate(conn)
    except BaseException:
        conn.close()
        raise
    if before != SCHEMA_VERSION:
        log.info(
            "database migrated",
            extra={"path": str(path), "from_version": before, "version": SCHEMA_VERSION},
        )
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the missing :data:`MIGRATIONS` to ``conn``'s database (now at
    :data:`SCHEMA_VERSION`); returns the version it had."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise BackendError(
            f"database schema version {version} is newer than this build's {SCHEMA_VERSION}",
            retryable=False,
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        with transaction(conn):
            # re-read under the write lock: another process may have migrated meanwhile
            (current,) = conn.execute("PRAGMA user_version").fetchone()
            if current >= target:
                continue
            for statement in MIGRATIONS[target - 1]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
    return int(version)


def _touch(conn: sqlite3.Connection, conversation_id: str, room: str, at: str) -> None:
    conn.execute(
        "INSERT INTO conversations (id, room, created_at, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE"
        " SET updated_at = max(coalesce(updated_at, ''), excluded.updated_at)",
        (conversation_id, room, at, at),
    )


__all__ = [
    "DB_FILENAME",
    "DEFAULT_PATH",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SQLiteBackend",
    "migrate",
]
