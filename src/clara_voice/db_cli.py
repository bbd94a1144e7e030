"""``python -m clara_voice db {migrate,status}``: the conversation store's schema, for an operator.

- ``migrate``: bring the configured store (``CLARA_BACKEND``: the SQLite file or the
  PostgreSQL database) up to this build's schema version, as every worker does when it
  opens the store. Running it before a deploy (an init container, a release job) means
  the workers find nothing to do, and lets the workers use a role that cannot change the
  schema. Exit 0 when the schema is current, 1 when it could not be brought there.
- ``status``: the store's schema version and this build's (and, for PostgreSQL, when each
  step was applied), without changing anything. Exit 0 when they match, 1 otherwise.

``CLARA_BACKEND=http`` has no schema here (exit 2). Errors are one line, never the
database URL's password.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from pathlib import Path

from clara_voice._redact import redact
from clara_voice.config import Settings
from clara_voice.persistence import postgres, sqlite
from clara_voice.persistence._postgres_schema import SCHEMA_VERSION as POSTGRES_VERSION
from clara_voice.persistence.base import BackendError


def main(args: argparse.Namespace, settings: Settings) -> int:
    """The ``db`` command, its arguments parsed by ``_cli.db_parser``."""
    if settings.backend == "http":
        print(
            "clara_voice db: CLARA_BACKEND=http keeps conversations in your own backend; "
            "there is no schema to migrate here",
            file=sys.stderr,
        )
        return 2
    try:
        return asyncio.run(_run(args.command, settings))
    except BackendError as exc:
        print(f"clara_voice db: {redact(str(exc))}", file=sys.stderr)
        return 1


async def _run(command: str, settings: Settings) -> int:
    if settings.backend == "postgres":
        assert settings.database_url is not None  # Settings refuses postgres without one
        if command == "migrate":
            return await _migrate_postgres(settings)
        return await _postgres_status(settings)
    path = settings.data_dir / sqlite.DB_FILENAME
    if command == "migrate":
        before = _sqlite_version(path)
        async with sqlite.SQLiteBackend(path):  # opening it migrates it
            pass
        return _report(str(path), before, sqlite.SCHEMA_VERSION, migrated=True)
    return _report(str(path), _sqlite_version(path), sqlite.SCHEMA_VERSION, migrated=False)


async def _migrate_postgres(settings: Settings) -> int:
    assert settings.database_url is not None
    backend = postgres.PostgresBackend(
        settings.database_url, timeout=settings.backend_timeout, pool_max=1
    )
    try:
        await backend.start()  # opening it migrates it (bounded by its migrate timeout)
    finally:
        await backend.aclose()
    before = backend.migrated_from or 0
    return _report(backend.where, before, POSTGRES_VERSION, migrated=True)


async def _postgres_status(settings: Settings) -> int:
    assert settings.database_url is not None
    with postgres.translated("read the schema version", settings.backend_timeout):
        async with asyncio.timeout(settings.backend_timeout):
            version, steps = await postgres.schema_status(settings.database_url)
    code = _report(postgres.describe_dsn(settings.database_url), version, POSTGRES_VERSION)
    for step, applied_at in steps:
        print(f"  step {step} applied {applied_at.isoformat(timespec='seconds')}")
    return code


def _report(where: str, version: int, known: int, *, migrated: bool = False) -> int:
    if migrated:
        done = "already at" if version == known else f"migrated from version {version} to"
        print(f"{where}: {done} version {known}")
        return 0
    if version == known:
        state = "up to date"
    elif version < known:
        state = "behind: a worker migrates it when it opens it, or run `db migrate`"
    else:
        state = "newer than this build: run the clara_voice that migrated it"
    print(f"{where}: schema version {version}, this build's {known}: {state}")
    return 0 if version == known else 1


def _sqlite_version(path: Path) -> int:
    """The file's schema version (0: no file yet), read without changing it."""
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackendError(f"cannot read {path}: {exc}", retryable=True) from exc


__all__ = ["main"]
