"""A PostgreSQL store shared by a fleet of workers (seed 004, issue 17).

``PostgresBackend(dsn)`` implements :class:`~clara_voice.persistence.base.Backend` on the
database ``CLARA_DATABASE_URL`` names, through asyncpg and its connection pool. Every
worker (every job process of every worker) writes to and reads from the same database, so
a person's history follows them to whichever worker serves their next session; the
durable outbox stays per worker in front of it, so a database that is down or slow loses
nothing.

Lifecycle. The first call (or :meth:`PostgresBackend.start`) opens the backend: one
connection brings the schema up to date (:mod:`~clara_voice.persistence._postgres_schema`:
versioned migrations under an advisory lock, a database newer than the build refused),
then the pool is made (``min_size=0``: connections are opened on demand, at most
``pool_max``, and closed after a minute idle). Opening runs in a task of its own, shared by
the callers waiting for it and shielded from their timeouts, so a slow migration is never
cut short by a caller and retried from scratch; one that fails is tried again by the next
call. :meth:`PostgresBackend.aclose` cancels it and closes the pool (bounded; the
connections still busy are then ended); it is idempotent.

Rows are the SQLite store's (:mod:`~clara_voice.persistence._records` parses and checks
every record for both), inserted with ``ON CONFLICT (record_key) DO NOTHING`` in one
transaction with the conversation's ``updated_at``: a second delivery of a key is a
success that stores nothing. History is read per (conversation, participant), ordered as
the SQLite store orders it: ``at``, then ``seq``, then insertion.

Errors are translated here, at the boundary (:func:`translate`), into
:class:`~clara_voice.persistence.base.BackendError`: the record is at fault (SQLSTATE
class 22, data exception, e.g. a NUL character PostgreSQL cannot store in text; class
23, integrity constraint violation; a value the driver cannot send) → not retryable, it
goes to the dead letters; anything else (connection refused or reset, a timeout,
serialization failures and deadlocks, too many connections, the server shutting down or
starting up, a read-only standby after a failover, refused credentials, a missing
database or table) is the database's fault → retryable, and the outbox keeps the record.
Every call is bounded by ``timeout`` (``CLARA_BACKEND_TIMEOUT``). The URL carries a
password: it is kept as a ``SecretStr`` and never written; logs name the database by
host, port and name only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any, TypeAlias, TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg
from livekit.agents.utils import aio
from pydantic import SecretStr

from clara_voice._lifecycle import AsyncService
from clara_voice.logging import get_logger
from clara_voice.persistence._postgres_schema import (
    SCHEMA_VERSION,
    Connection,
    applied_steps,
    migrate,
    schema_version,
)
from clara_voice.persistence._records import check_names, insert_sql, iso, now, parse
from clara_voice.persistence.base import BackendError, OutboxRecord, StoredMessage

DEFAULT_POOL_MAX = 2
"""Connections one backend (one job process) opens at most (``CLARA_DATABASE_POOL_MAX``)."""
MIGRATE_TIMEOUT = 600.0
"""Bound in seconds on bringing the schema up to date (a step may rebuild a big table)."""
CLOSE_TIMEOUT = 5.0
"""Bound in seconds on closing the pool gracefully before its connections are ended."""
APPLICATION_NAME = "clara_voice"
"""What ``pg_stat_activity.application_name`` shows for clara_voice's connections."""
_IDLE_LIFETIME = 60.0  # seconds an idle pooled connection is kept
_SERVER_SETTINGS = {"application_name": APPLICATION_NAME}
_RECORD_AT_FAULT = frozenset({"22", "23"})  # SQLSTATE classes: data exception, integrity

log = get_logger("clara_voice.persistence.postgres")

T = TypeVar("T")
Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"


class PostgresBackend(AsyncService):
    """The conversation store in the PostgreSQL database at ``dsn`` (``postgresql://…``).

    ``timeout`` bounds each call in seconds; ``pool_max`` is the most connections it
    opens; ``migrate_timeout`` bounds bringing the schema up to date when it opens.
    """

    def __init__(
        self,
        dsn: SecretStr,
        *,
        timeout: float = 5.0,
        pool_max: int = DEFAULT_POOL_MAX,
        migrate_timeout: float = MIGRATE_TIMEOUT,
    ) -> None:
        for name, value in (("timeout", timeout), ("migrate_timeout", migrate_timeout)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if pool_max < 1:
            raise ValueError(f"pool_max must be at least 1, got {pool_max!r}")
        self._dsn = dsn
        self._timeout = timeout
        self._pool_max = pool_max
        self._migrate_timeout = migrate_timeout
        self._pool: Pool | None = None
        self._opening: asyncio.Task[Pool] | None = None
        self._closed = False
        self.migrated_from: int | None = None
        """The schema version the database had when this backend opened it."""

    @property
    def where(self) -> str:
        """The database as ``host:port/name``, without credentials (for logs)."""
        return describe_dsn(self._dsn)

    async def start(self) -> None:
        """Open the backend: the schema brought up to date, the pool made. Calls open it
        when it was not started."""
        await self._ready()

    async def agent_joined(self, *, room: str, conversation_id: str) -> str:
        """Create or confirm the conversation row; an empty id gets a new one."""
        check_names(room, conversation_id)
        conversation = conversation_id or uuid.uuid4().hex
        await self._call(
            "confirm the conversation", lambda conn: _touch(conn, conversation, room, now())
        )
        return conversation

    async def get_recent_messages(
        self, conversation_id: str, limit: int, *, participant: str
    ) -> list[StoredMessage]:
        """The last ``limit`` messages of ``participant``'s history in a conversation,
        oldest first."""
        if limit <= 0:
            return []
        rows = await self._call(
            "load the history",
            lambda conn: conn.fetch(
                "SELECT role, text, at FROM messages WHERE conversation_id = $1"
                " AND participant = $2 ORDER BY at DESC, seq DESC, id DESC LIMIT $3",
                conversation_id,
                participant,
                limit,
            ),
        )
        return [
            StoredMessage(role=role, text=text, at=iso(at), participant=participant)
            for role, text, at in reversed(rows)
        ]

    async def deliver(self, record: OutboxRecord) -> None:
        """Store one record; a key already stored is success. Malformed: not retryable."""
        row = parse(record)
        sql = insert_sql(row, lambda n: f"${n}")

        async def store(conn: Connection) -> None:
            async with conn.transaction():
                await _touch(conn, row.conversation_id, row.room, row.at)
                await conn.execute(sql, *row.values)

        await self._call("store the record", store)

    async def aclose(self) -> None:
        """Stop opening, close the pool (its busy connections are ended after
        :data:`CLOSE_TIMEOUT`); idempotent. Later calls fail, retryably."""
        if self._closed:
            return
        self._closed = True
        if self._opening is not None:
            await aio.cancel_and_wait(self._opening)
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await pool.close()
        except TimeoutError:
            pool.terminate()
            log.warning("postgres connections still busy at close, ended", extra=self._context())

    async def _call(self, what: str, op: Callable[[Connection], Awaitable[T]]) -> T:
        with translated(what, self._timeout):
            async with asyncio.timeout(self._timeout):
                pool = await self._ready()
                async with pool.acquire() as conn:
                    return await op(conn)

    async def _ready(self) -> Pool:
        if self._closed:
            # retryable: a record an outbox still holds must not be refused for good
            raise BackendError("the postgres backend is closed", retryable=True)
        if self._pool is not None:
            return self._pool
        opening = self._opening
        if opening is None or opening.done():  # never tried, or the last try failed
            opening = self._opening = asyncio.create_task(self._open(), name="clara.postgres.open")
            opening.add_done_callback(_seen)
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if opening.cancelled() and not (task and task.cancelling()):  # aclose, not us
                raise BackendError("the postgres backend is closed", retryable=True) from None
            raise

    async def _open(self) -> Pool:
        with translated("open the database", self._timeout):
            migrating = False
            try:
                async with asyncio.timeout(self._timeout) as bound, connection(self._dsn) as conn:
                    # connecting is bounded by the call timeout, migrating by its own bound
                    migrating = True
                    bound.reschedule(asyncio.get_running_loop().time() + self._migrate_timeout)
                    before = await migrate(conn)
            except TimeoutError:
                if not migrating:
                    raise
                raise BackendError(
                    f"postgres did not finish migrating within {self._migrate_timeout:g}s",
                    retryable=True,
                ) from None
            pool: Pool = await asyncpg.create_pool(
                self._dsn.get_secret_value(),
                min_size=0,
                max_size=self._pool_max,
                max_inactive_connection_lifetime=_IDLE_LIFETIME,
                command_timeout=self._timeout,
                timeout=self._timeout,
                server_settings=_SERVER_SETTINGS,
            )
        self.migrated_from = before
        if before != SCHEMA_VERSION:
            log.info(
                "database migrated",
                extra={**self._context(), "from_version": before, "version": SCHEMA_VERSION},
            )
        self._pool = pool
        return pool

    def _context(self) -> dict[str, Any]:
        return {"database": self.where}


async def _touch(conn: Connection, conversation_id: str, room: str, at: datetime) -> None:
    await conn.execute(
        "INSERT INTO conversations (id, room, created_at, updated_at) VALUES ($1, $2, $3, $3)"
        " ON CONFLICT (id) DO UPDATE"
        " SET updated_at = greatest(conversations.updated_at, excluded.updated_at)",
        conversation_id,
        room,
        at,
    )


@contextlib.asynccontextmanager
async def connection(dsn: SecretStr) -> AsyncIterator[Connection]:
    """One connection of its own (not pooled), for migrations and the ``db`` command:
    ended at once if the block fails (a cancelled statement included), closed otherwise.
    Unbounded: the caller bounds it."""
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(
        dsn.get_secret_value(), server_settings=_SERVER_SETTINGS
    )
    try:
        yield conn
    except BaseException:
        conn.terminate()
        raise
    async with asyncio.timeout(CLOSE_TIMEOUT):
        await conn.close()


async def schema_status(dsn: SecretStr) -> tuple[int, list[tuple[int, datetime]]]:
    """The database's schema version and its applied steps (version, when), read without
    migrating anything. Unbounded: the caller bounds it."""
    async with connection(dsn) as conn:
        return await schema_version(conn), await applied_steps(conn)


@contextlib.contextmanager
def translated(what: str, timeout: float) -> Iterator[None]:
    """Errors of the block become :class:`BackendError` (see :func:`translate`)."""
    try:
        yield
    except BackendError:
        raise
    except Exception as exc:
        error = translate(exc, what, timeout=timeout)
        if error is None:
            raise  # not the database's answer: a bug, left for the caller to count
        raise error from exc


def translate(exc: Exception, what: str, *, timeout: float) -> BackendError | None:
    """``exc`` as a :class:`BackendError` saying whether retrying may help (module
    docstring); ``None`` when it is not an error of the database or the way to it."""
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(
        exc.__context__, asyncpg.PostgresError
    ):
        exc = exc.__context__  # a transaction could not end after its statement failed: why
    if isinstance(exc, asyncpg.PostgresError):
        # the server's message alone: its detail may quote the row (a person's words)
        state = exc.sqlstate or "?"
        message = exc.message or str(exc).partition("\n")[0] or type(exc).__name__
        if state[:2] in _RECORD_AT_FAULT:
            return BackendError(f"postgres refused to {what} ({state}): {message}", retryable=False)
        return BackendError(f"postgres could not {what} ({state}): {message}", retryable=True)
    if isinstance(exc, TimeoutError):
        return BackendError(
            f"postgres did not {what} within {timeout:g}s (CLARA_BACKEND_TIMEOUT)", retryable=True
        )
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        # the driver refused a value before sending it (a record's), or the URL (ours)
        config = isinstance(exc, asyncpg.ClientConfigurationError)
        return BackendError(f"postgres could not {what}: {exc}", retryable=config)
    if isinstance(exc, OSError | asyncpg.InterfaceError | asyncpg.InternalClientError):
        return BackendError(
            f"postgres out of reach, could not {what}: {type(exc).__name__}: {exc}",
            retryable=True,
        )
    return None


def describe_dsn(dsn: SecretStr) -> str:
    """``host:port/name`` of the database a URL names, without credentials."""
    parts = urlsplit(dsn.get_secret_value())
    query = parse_qs(parts.query)
    try:
        host = parts.hostname or query.get("host", [""])[0]
        port = parts.port or query.get("port", ["5432"])[0]
    except ValueError:  # several hosts, or an odd port: name the first as written
        host, port = parts.netloc.rpartition("@")[2], ""
    name = parts.path.lstrip("/") or query.get("dbname", [""])[0]
    return f"{host}:{port}/{name}" if port else f"{host}/{name}"


def _seen(task: asyncio.Task[Pool]) -> None:
    # every caller waiting for the opening got its outcome; this marks it retrieved too,
    # for when they had all timed out before it ended
    if not task.cancelled():
        task.exception()


__all__ = [
    "APPLICATION_NAME",
    "CLOSE_TIMEOUT",
    "DEFAULT_POOL_MAX",
    "MIGRATE_TIMEOUT",
    "PostgresBackend",
    "connection",
    "describe_dsn",
    "schema_status",
    "translate",
    "translated",
]
