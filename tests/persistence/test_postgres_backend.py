"""The PostgreSQL store on a real server the harness starts: migrations (fresh, from an
older version, several workers at once, a newer database refused), errors and whether
retrying may help (the server stopped, connections ended by it, a call that outlasts its
bound, values PostgreSQL cannot store, refused credentials), and closing (no task, no
connection left). The contract it shares with SQLite is in test_store_contract.py."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import asyncpg
import pytest
from pydantic import SecretStr

from clara_voice.persistence._postgres_schema import (
    LOCK_KEY,
    MIGRATIONS,
    SCHEMA_VERSION,
    VERSION_TABLE,
    NewerSchemaError,
    migrate,
)
from clara_voice.persistence.base import BackendError
from clara_voice.persistence.postgres import APPLICATION_NAME, PostgresBackend, translate
from testkit.livekit_server import free_port
from testkit.postgres import PostgresServer, query, until_rows
from testkit.tasks import other_tasks
from tests.persistence.records import turn


def url(dsn: SecretStr) -> str:
    return dsn.get_secret_value()


async def versions(dsn: SecretStr) -> list[object]:
    return [v for (v,) in await query(url(dsn), f"SELECT version FROM {VERSION_TABLE}")]


async def clara_connections(dsn: SecretStr) -> list[tuple[object, ...]]:
    """clara_voice's connections to this test's database: (pid, state, wait event type)."""
    return await query(
        url(dsn),
        "SELECT pid, state, wait_event_type FROM pg_stat_activity"
        " WHERE application_name = $1 AND datname = current_database()",
        APPLICATION_NAME,
    )


@pytest.fixture
async def locked(postgres_dsn: SecretStr) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    """Another session holding the ``messages`` table locked (migrated first); the lock is
    released when the test ends, or earlier with ``ROLLBACK``."""
    async with PostgresBackend(postgres_dsn):
        pass
    conn = await asyncpg.connect(url(postgres_dsn), timeout=10)
    await conn.execute("BEGIN; LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
    yield conn
    await conn.close(timeout=10)


# -- migrations --------------------------------------------------------------------------------


async def test_a_new_database_is_migrated_once_and_reopening_changes_nothing(
    postgres_dsn: SecretStr,
) -> None:
    async with PostgresBackend(postgres_dsn) as backend:
        assert backend.migrated_from == 0
        await backend.deliver(turn(0))
    tables = await query(
        url(postgres_dsn),
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
    )
    assert [t for (t,) in tables] == sorted(
        ["conversations", "messages", "participant_events", "sessions", VERSION_TABLE]
    )
    assert await versions(postgres_dsn) == list(range(1, SCHEMA_VERSION + 1))

    async with PostgresBackend(postgres_dsn) as backend:
        assert backend.migrated_from == SCHEMA_VERSION
        history = await backend.get_recent_messages("c1", 10, participant="alice")
    assert [m.text for m in history] == ["message 0"]
    assert await versions(postgres_dsn) == list(range(1, SCHEMA_VERSION + 1))


async def test_an_older_database_gets_the_missing_steps_only(postgres_dsn: SecretStr) -> None:
    async with PostgresBackend(postgres_dsn) as backend:
        await backend.deliver(turn(0))
    # the next build's list: this one's steps, untouched, and one more
    later = (*MIGRATIONS, ("ALTER TABLE messages ADD COLUMN language text",))
    conn = await asyncpg.connect(url(postgres_dsn), timeout=10)
    try:
        assert await migrate(conn, steps=later) == SCHEMA_VERSION
        assert await migrate(conn, steps=later) == SCHEMA_VERSION + 1
    finally:
        await conn.close(timeout=10)
    assert await versions(postgres_dsn) == list(range(1, SCHEMA_VERSION + 2))
    assert await query(url(postgres_dsn), "SELECT text, language FROM messages") == [
        ("message 0", None)
    ]


async def test_workers_starting_together_migrate_once(postgres_dsn: SecretStr) -> None:
    """Every step creates tables (it fails if run twice): four workers opening a new
    database at the same moment all start, and each step is applied once."""
    backends = [PostgresBackend(postgres_dsn) for _ in range(4)]
    try:
        await asyncio.gather(*(b.start() for b in backends))
        assert sorted(b.migrated_from or 0 for b in backends)[0] == 0
        await asyncio.gather(*(b.deliver(turn(n, session=f"s{n}")) for n, b in enumerate(backends)))
    finally:
        await asyncio.gather(*(b.aclose() for b in backends))
    assert await versions(postgres_dsn) == list(range(1, SCHEMA_VERSION + 1))
    assert await query(url(postgres_dsn), "SELECT count(*) FROM messages") == [(4,)]


async def test_a_migration_held_up_is_bounded_and_tried_again(postgres_dsn: SecretStr) -> None:
    """Another worker holds the migrations' lock (a long step): calls wait their own bound
    while the opening goes on, the opening gives up at its bound, and the next call, once
    the lock is free, migrates."""
    holder = await asyncpg.connect(url(postgres_dsn), timeout=10)
    await holder.execute("BEGIN")
    await holder.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
    backend = PostgresBackend(postgres_dsn, timeout=0.3, migrate_timeout=1.0)
    try:
        with pytest.raises(BackendError, match=r"did not store the record within 0.3s") as caught:
            await backend.deliver(turn(0))
        assert caught.value.retryable
        with pytest.raises(BackendError, match=r"did not finish migrating within 1s") as caught:
            await backend.start()  # waits for the same opening
        assert caught.value.retryable
        await holder.execute("ROLLBACK")
        await backend.deliver(turn(0))
        assert backend.migrated_from == 0
    finally:
        await backend.aclose()
        await holder.close(timeout=10)
    assert await versions(postgres_dsn) == list(range(1, SCHEMA_VERSION + 1))


async def test_a_database_newer_than_the_build_is_refused(
    postgres_server: PostgresServer, postgres_dsn: SecretStr
) -> None:
    async with PostgresBackend(postgres_dsn):
        pass
    newer = SCHEMA_VERSION + 1
    database = url(postgres_dsn).rpartition("/")[2]
    postgres_server.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES ({newer})", database)

    backend = PostgresBackend(postgres_dsn)
    with pytest.raises(NewerSchemaError, match=f"version {newer}, newer than this build's"):
        await backend.start()
    with pytest.raises(BackendError, match="newer") as caught:
        await backend.deliver(turn(0))
    assert caught.value.retryable  # the database's fault: the outbox keeps the record
    await backend.aclose()
    assert await versions(postgres_dsn) == [*range(1, SCHEMA_VERSION + 1), newer]
    assert await query(url(postgres_dsn), "SELECT count(*) FROM messages") == [(0,)]


# -- errors --------------------------------------------------------------------------------------


async def test_a_stopped_server_is_retryable_and_the_same_backend_recovers(
    postgres_server: PostgresServer, postgres_dsn: SecretStr
) -> None:
    async with PostgresBackend(postgres_dsn, timeout=2) as backend:
        await backend.deliver(turn(0))
        postgres_server.stop()
        try:
            fresh = PostgresBackend(postgres_dsn, timeout=2)
            for call in (
                backend.deliver(turn(1)),
                backend.get_recent_messages("c1", 5, participant="alice"),
                fresh.start(),
            ):
                with pytest.raises(BackendError) as caught:
                    await call
                assert caught.value.retryable, caught.value
            await fresh.aclose()
        finally:
            postgres_server.start()
        await backend.deliver(turn(1))
        history = await backend.get_recent_messages("c1", 5, participant="alice")
    assert [m.text for m in history] == ["message 0", "message 1"]


async def test_a_connection_the_server_ends_is_retryable(
    postgres_dsn: SecretStr, locked: asyncpg.Connection[asyncpg.Record]
) -> None:
    """An administrator (or a failover) ends the connection in the middle of a delivery."""
    async with PostgresBackend(postgres_dsn, timeout=20) as backend:
        delivery = asyncio.create_task(backend.deliver(turn(0)))
        await until_waiting_for_the_lock(postgres_dsn)
        await locked.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = current_database()",
            APPLICATION_NAME,
        )
        with pytest.raises(BackendError, match="administrator command") as caught:
            await delivery
        assert caught.value.retryable
        await locked.execute("ROLLBACK")
        await backend.deliver(turn(0))
    assert await query(url(postgres_dsn), "SELECT count(*) FROM messages") == [(1,)]


async def test_every_call_is_bounded_by_the_timeout(
    postgres_dsn: SecretStr, locked: asyncpg.Connection[asyncpg.Record]
) -> None:
    async with PostgresBackend(postgres_dsn, timeout=0.5) as backend:
        for call in (
            backend.deliver(turn(0)),
            backend.get_recent_messages("c1", 5, participant="alice"),
        ):
            with pytest.raises(
                BackendError, match=r"within 0.5s \(CLARA_BACKEND_TIMEOUT\)"
            ) as caught:
                await call
            assert caught.value.retryable
        await locked.execute("ROLLBACK")
        await backend.deliver(turn(0))  # the pool's connections were not left in a bad state
        assert [
            m.text for m in await backend.get_recent_messages("c1", 5, participant="alice")
        ] == ["message 0"]
        assert all(state == "idle" for _, state, _ in await clara_connections(postgres_dsn))


@pytest.mark.parametrize(
    ("changes", "state"),
    [
        ({"text": "a NUL \x00 in the text"}, "22021"),
        ({"metrics": {"note": "a NUL \x00 in JSON"}}, "22P05"),
        ({"seq": 2**63}, "22000"),  # refused by the driver before it is sent
    ],
    ids=["text", "json", "bigint"],
)
async def test_a_value_postgres_cannot_store_is_refused_for_good(
    postgres_dsn: SecretStr, changes: dict[str, object], state: str
) -> None:
    record = turn(0)
    bad = type(record)(key=record.key, kind=record.kind, payload=record.payload | changes)
    async with PostgresBackend(postgres_dsn) as backend:
        with pytest.raises(
            BackendError, match=f"refused to store the record \\({state}\\)"
        ) as caught:
            await backend.deliver(bad)
        assert not caught.value.retryable  # the outbox moves it to the dead letters
        await backend.deliver(turn(1))  # the next one goes through
    assert await query(url(postgres_dsn), "SELECT record_key FROM messages") == [("turn:s1:1",)]


async def test_refused_credentials_are_retryable_and_never_shown(
    postgres_server: PostgresServer, postgres_dsn: SecretStr
) -> None:
    database = url(postgres_dsn).rpartition("/")[2]
    wrong = "not-the-password-7WQ"
    backend = PostgresBackend(SecretStr(postgres_server.dsn(database, password=wrong)))
    with pytest.raises(BackendError, match="28P01") as caught:
        await backend.deliver(turn(0))
    assert caught.value.retryable  # an operator fixes CLARA_DATABASE_URL; the records wait
    await backend.aclose()
    assert wrong not in str(caught.value) and postgres_server.password not in str(caught.value)


def test_errors_are_sorted_by_who_is_at_fault() -> None:
    """The record (SQLSTATE classes 22 and 23, a value the driver cannot send): never
    retryable. The database or the way to it: retryable. Anything else is not ours."""
    record_at_fault = [
        asyncpg.UniqueViolationError("duplicate key"),
        asyncpg.CheckViolationError("check"),
        asyncpg.NotNullViolationError("null"),
        asyncpg.ForeignKeyViolationError("fk"),
        asyncpg.CharacterNotInRepertoireError("nul"),
        asyncpg.DataError("invalid input for query argument $1"),
        asyncpg.NumericValueOutOfRangeError("out of range"),
    ]
    database_at_fault: list[Exception] = [
        asyncpg.TooManyConnectionsError("too many clients"),
        asyncpg.SerializationError("could not serialize"),
        asyncpg.DeadlockDetectedError("deadlock"),
        asyncpg.AdminShutdownError("terminating connection"),
        asyncpg.CannotConnectNowError("starting up"),
        asyncpg.ReadOnlySQLTransactionError("read-only transaction"),
        asyncpg.InvalidPasswordError("password authentication failed"),
        asyncpg.InvalidCatalogNameError("database does not exist"),
        asyncpg.UndefinedTableError("relation does not exist"),
        asyncpg.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.QueryCanceledError("statement timeout"),
        asyncpg.InterfaceError("pool is closing"),
        asyncpg.ClientConfigurationError("invalid sslmode"),
        ConnectionRefusedError("refused"),
        ConnectionResetError("reset"),
        socket.gaierror("name unknown"),
        TimeoutError(),
    ]
    for exc in record_at_fault:
        error = translate(exc, "store the record", timeout=5)
        assert error is not None and not error.retryable, exc
    for exc in database_at_fault:
        error = translate(exc, "store the record", timeout=5)
        assert error is not None and error.retryable, exc
    assert translate(KeyError("ours"), "store the record", timeout=5) is None


# -- closing -------------------------------------------------------------------------------------


async def test_closing_leaves_no_task_and_no_connection(postgres_dsn: SecretStr) -> None:
    backend = PostgresBackend(postgres_dsn, pool_max=2)
    await asyncio.gather(*(backend.deliver(turn(n)) for n in range(6)))
    assert 1 <= len(await clara_connections(postgres_dsn)) <= 2  # the pool's bound
    await backend.aclose()
    await backend.aclose()
    assert not other_tasks()
    await until_rows(
        url(postgres_dsn),
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        " AND datname = current_database()",
        APPLICATION_NAME,
        check=lambda rows: rows == [(0,)],
        what="the server to see the pool's connections closed",
    )


async def test_closing_while_the_database_does_not_answer_ends_the_waiting_call() -> None:
    """A server that accepts and never answers: the call waits for the opening (bounded by
    its timeout); closing the backend meanwhile ends that call at once, retryably."""
    accepted = asyncio.Event()
    peers: list[asyncio.StreamWriter] = []

    def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)
        accepted.set()

    port = free_port()
    server = await asyncio.start_server(hold, "127.0.0.1", port)
    backend = PostgresBackend(
        SecretStr(f"postgresql://clara:pw@127.0.0.1:{port}/clara"), timeout=30
    )
    try:
        delivery = asyncio.create_task(backend.deliver(turn(0)))
        async with asyncio.timeout(10):
            await accepted.wait()
        await backend.aclose()
        with pytest.raises(BackendError, match="closed") as caught:
            await delivery
        assert caught.value.retryable
        assert not other_tasks()
    finally:
        for peer in peers:
            peer.close()
        server.close()
        await server.wait_closed()


async def until_waiting_for_the_lock(dsn: SecretStr) -> None:
    await until_rows(
        url(dsn),
        "SELECT 1 FROM pg_stat_activity WHERE application_name = $1"
        " AND datname = current_database() AND wait_event_type = 'Lock'",
        APPLICATION_NAME,
        what="the delivery to wait for the table lock",
    )
