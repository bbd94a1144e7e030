"""The outbox file format: one SQLite file per outbox instance, and its lock.

A file holds ``records`` (acknowledged, not yet delivered, in ``seq`` order) and
``dead_letters`` (records the backend refused for good, or that failed too often). It is
in WAL mode with ``synchronous=FULL``, and owned by whoever holds the exclusive ``flock``
on its ``<name>.lock`` sidecar. Shared by the outbox's store
(:mod:`clara_voice.persistence._outbox_files`) and the operator's tools
(:mod:`clara_voice.persistence.dead_letters`).
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from clara_voice.persistence._sqlite_tx import transaction
from clara_voice.persistence.base import OutboxError

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of an outbox file."""

SCHEMA = (
    # seq orders delivery; AUTOINCREMENT so a deleted seq is never reused by a later record
    """CREATE TABLE records (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    """CREATE TABLE dead_letters (
        key TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        error TEXT NOT NULL,
        created_at TEXT NOT NULL,
        failed_at TEXT NOT NULL
    )""",
)
BUSY_TIMEOUT = 5.0  # seconds SQLite waits for a lock held by another connection
NAME = re.compile(r"[0-9a-f]{32}")
"""A file's name (its ``.db`` and ``.lock`` stems)."""
ERROR_CHARS = 500


def connect(path: Path, *, create: bool) -> sqlite3.Connection:

    mode = "rwc" if create else "rw"
    conn = sqlite3.connect(
        f"{path.as_uri()}?mode={mode}", uri=True, isolation_level=None, timeout=BUSY_TIMEOUT
    )
    try:
        (journal,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if journal != "wal":
            raise OutboxError(f"{path.name} cannot use WAL mode ({journal})", retryable=False)
        conn.execute("PRAGMA synchronous = FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def init_schema(conn: sqlite3.Connection) -> None:

    with transaction(conn):
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version == SCHEMA_VERSION:
            return
        if version != 0:
            raise OutboxError(
                f"outbox file version {version}, this build reads {SCHEMA_VERSION}",
                retryable=False,
            )
        for statement in SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def is_current(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not one deleted, or replaced, since)."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]


def now() -> str:
    return datetime.now(UTC).isoformat()


__all__ = [
    "BUSY_TIMEOUT",
    "NAME",
    "SCHEMA",
    "SCHEMA_VERSION",
    "connect",
    "describe",
    "init_schema",
    "is_current",
    "now",
    "try_lock",
]
