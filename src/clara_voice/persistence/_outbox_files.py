"""The outbox's files: the SQLite files, their locks, orphan adoption, dead letters.

This private module is the file half of :mod:`clara_voice.persistence.outbox`. The
:class:`~clara_voice.persistence.outbox.Outbox` (the asyncio side and the writer) owns one
:class:`_Store` and calls it only through its single I/O thread, never on the event loop
(the loop side shares only the small record types and ``_describe``). Nothing here logs:
the store returns what happened (adoptions, retired files, pages of records) and the
outbox reports it. Both raise :class:`~clara_voice.persistence.base.OutboxError`.

Files. Each outbox instance (one per job process) has its own file
``<directory>/outbox/<uuid>.db`` held with an exclusive ``flock`` on the sidecar
``<uuid>.lock`` for the life of the instance. At start (and every ``sweep_interval``
seconds when idle) it sweeps the folder: a ``.db`` whose lock it can take belongs to a
process that ended (SIGKILL included: the kernel drops the lock) with records left. It is
adopted, its records delivered in their own order before the instance's own, and deleted
once empty. A file whose lock is held by a live process is left alone. A lock only counts
while its file is still the one at the path (same inode), which closes the races with a
sweeper deleting an empty file or a stale lock file.

Durability. The files are in WAL mode with ``synchronous=FULL``: each commit fsyncs the WAL
before ``put`` returns, so an acknowledged record survives a power loss or an OS crash,
not only a killed process (``NORMAL`` would only cover the latter, which breaks "an
acknowledged record is never lost"). Puts waiting at the same time share one transaction
(group commit), so the fsync is paid once per batch, not once per record.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from clara_voice.persistence._sqlite_tx import transaction
from clara_voice.persistence.base import OutboxError, OutboxRecord

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of an outbox file."""

_SCHEMA = (
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
_PAGE = 100  # records read per round trip to the thread
_BUSY_TIMEOUT = 5.0  # seconds SQLite waits for a lock held by another connection
_NAME = re.compile(r"[0-9a-f]{32}")
_ERROR_CHARS = 500


@dataclass(frozen=True)
class _Row:
    key: str
    kind: str
    payload: str


@dataclass(eq=False)
class _File:
    name: str
    db_path: Path
    lock_path: Path
    lock_fd: int
    conn: sqlite3.Connection
    own: bool
    closed: bool = False


@dataclass(frozen=True)
class _Adoption:
    name: str
    pending: int = 0
    dead_letters: int = 0
    error: str | None = None


@dataclass(frozen=True)
class _Page:
    file: _File | None
    rows: list[tuple[int, OutboxRecord]] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)


class _Store:
    """The outbox's SQLite files: its own and the adopted ones. Used only on its thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.own: _File | None = None
        self.adopted: list[_File] = []  # delivered before our own, oldest first
        self._unreadable: set[str] = set()  # orphans that failed to open: left for a human

    def open(self) -> list[_Adoption]:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name, lock_path, fd = self._new_lock()
        db_path = self.directory / f"{name}.db"
        conn: sqlite3.Connection | None = None
        try:
            # created private before SQLite opens it; the -wal and -shm files copy its mode
            os.close(os.open(db_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            conn = _connect(db_path, create=True)
            _init_schema(conn)
        except BaseException:
            if conn is not None:
                conn.close()
            db_path.unlink(missing_ok=True)
            lock_path.unlink(missing_ok=True)
            os.close(fd)
            raise
        self.own = _File(name, db_path, lock_path, fd, conn, own=True)
        return self.sweep()

    def _new_lock(self) -> tuple[str, Path, int]:

        for _ in range(8):
            name = uuid.uuid4().hex
            path = self.directory / f"{name}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            # a sweeper may delete a lock file with no .db before we lock it: start over
            if _try_lock(fd) and _is_current(fd, path):
                return name, path, fd
            os.close(fd)
        raise OutboxError("could not lock a new outbox file", retryable=True)

    def sweep(self) -> list[_Adoption]:

        assert self.own is not None
        taken = {self.own.name, *(f.name for f in self.adopted), *self._unreadable}
        databases: list[tuple[float, str]] = []
        locks: set[str] = set()
        with os.scandir(self.directory) as entries:
            for entry in entries:
                stem, _, suffix = entry.name.partition(".")
                if not _NAME.fullmatch(stem) or stem in taken:
                    continue
                if suffix == "db":
                    with contextlib.suppress(FileNotFoundError):
                        databases.append((entry.stat().st_mtime, stem))
                elif suffix == "lock":
                    locks.add(stem)
        adoptions = []
        for _, name in sorted(databases):  # oldest first
            try:
                adoption = self._adopt(name)
            except (OSError, sqlite3.Error, OutboxError) as exc:
                self._unreadable.add(name)
                adoption = _Adoption(name, error=_describe(exc))
            if adoption is not None:
                adoptions.append(adoption)
        for name in locks.difference(n for _, n in databases):
            with contextlib.suppress(OSError):  # left for the next sweep
                self._remove_stale_lock(name)
        return adoptions

    def _adopt(self, name: str) -> _Adoption | None:

        assert self.own is not None
        db_path = self.directory / f"{name}.db"
        lock_path = self.directory / f"{name}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        if not (_try_lock(fd) and _is_current(fd, lock_path)):
            os.close(fd)  # a live process holds it, or it was just deleted
            return None
        if not db_path.exists():  # another sweeper delivered and deleted it meanwhile
            lock_path.unlink(missing_ok=True)
            os.close(fd)
            return None
        conn: sqlite3.Connection | None = None
        try:
            conn = _connect(db_path, create=False)
            _init_schema(conn)  # a process killed while creating its file left it empty
            (pending,) = conn.execute("SELECT count(*) FROM records").fetchone()
            dead = conn.execute(
                "SELECT key, kind, payload, error, created_at, failed_at FROM dead_letters"
            ).fetchall()
            if dead:  # kept in our own file, so the adopted one can be deleted once delivered
                with transaction(self.own.conn):
                    self.own.conn.executemany(
                        "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?)", dead
                    )
                with transaction(conn):
                    conn.execute("DELETE FROM dead_letters")
        except (sqlite3.Error, OutboxError) as exc:
            if conn is not None:
                conn.close()
            os.close(fd)
            self._unreadable.add(name)
            return _Adoption(name, error=_describe(exc))
        self.adopted.append(_File(name, db_path, lock_path, fd, conn, own=False))
        return _Adoption(name, pending=pending, dead_letters=len(dead))

    def _remove_stale_lock(self, name: str) -> None:
        # a lock file without its .db: its owner died before creating the file, or after
        # deleting it; a starting owner re-checks its lock after locking (see _new_lock)
        lock_path = self.directory / f"{name}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            if _try_lock(fd) and _is_current(fd, lock_path):
                db_path = self.directory / f"{name}.db"
                if not db_path.exists():
                    for suffix in ("-wal", "-shm"):
                        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
                    lock_path.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def commit(self, rows: list[_Row]) -> int:
        """Insert ``rows`` in one transaction; returns how many were new keys."""
        assert self.own is not None
        created_at = _now()
        with transaction(self.own.conn):
            cursor = self.own.conn.executemany(
                "INSERT INTO records (key, kind, payload, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key) DO NOTHING",
                [(r.key, r.kind, r.payload, created_at) for r in rows],
            )
        return cursor.rowcount

    def next_page(self, delivered: list[tuple[_File, int, str]]) -> _Page:
        """Forget ``delivered``, then the next records to deliver: adopted files first."""
        self.forget(delivered)
        assert self.own is not None
        retired: list[str] = []
        for file in [*self.adopted, self.own]:
            rows = file.conn.execute(
                "SELECT seq, key, kind, payload FROM records ORDER BY seq LIMIT ?", (_PAGE,)
            ).fetchall()
            if rows:
                records = [
                    (seq, OutboxRecord(key=key, kind=kind, payload=json.loads(payload)))
                    for seq, key, kind, payload in rows
                ]
                return _Page(file, records, retired)
            if not file.own:
                self.adopted.remove(file)
                self._retire(file)
                retired.append(file.name)
        return _Page(None, [], retired)

    def dead_letter(self, file: _File, seq: int, key: str, error: str) -> None:
        """Move one record to the dead letters of this instance's own file."""
        assert self.own is not None
        own = self.own.conn
        row = file.conn.execute(
            "SELECT key, kind, payload, created_at FROM records WHERE seq = ? AND key = ?",
            (seq, key),
        ).fetchone()
        if row is None:
            return
        with transaction(own):
            own.execute(
                "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?)",
                (*row[:3], error, row[3], _now()),
            )
            if file.own:
                own.execute("DELETE FROM records WHERE seq = ? AND key = ?", (seq, key))
        if not file.own:  # a crash in between leaves it in both: it is refused again, no loss
            with transaction(file.conn):
                file.conn.execute("DELETE FROM records WHERE seq = ? AND key = ?", (seq, key))

    def close(self, delivered: list[tuple[_File, int, str]]) -> int:
        """Release every file (deleting our own when empty); returns the records left."""
        failures: list[Exception] = []
        try:
            self.forget(delivered)
        except Exception as exc:
            failures.append(exc)
        left = 0
        for file in [*self.adopted, *([self.own] if self.own else [])]:
            try:
                (pending,) = file.conn.execute("SELECT count(*) FROM records").fetchone()
                (dead,) = file.conn.execute("SELECT count(*) FROM dead_letters").fetchone()
                left += pending
                if pending == 0 and dead == 0:
                    self._retire(file)
                else:
                    self._release(file)
            except Exception as exc:
                failures.append(exc)
                with contextlib.suppress(Exception):
                    self._release(file)
        self.adopted = []
        if failures:
            raise ExceptionGroup("could not close every outbox file", failures)
        return left

    def forget(self, delivered: list[tuple[_File, int, str]]) -> None:
        """Delete delivered records (a seq is never reused, so deleting twice is harmless)."""
        by_file: dict[int, tuple[_File, list[tuple[int, str]]]] = {}
        for file, seq, key in delivered:
            by_file.setdefault(id(file), (file, []))[1].append((seq, key))
        for file, rows in by_file.values():
            if file.closed:  # retired since: nothing left to delete
                continue
            with transaction(file.conn):
                file.conn.executemany("DELETE FROM records WHERE seq = ? AND key = ?", rows)

    def _retire(self, file: _File) -> None:
        # deleted while locked (the lock file last), so no sweeper adopts a half-deleted file
        file.closed = True
        file.conn.close()
        for path in (file.db_path, Path(f"{file.db_path}-wal"), Path(f"{file.db_path}-shm")):
            path.unlink(missing_ok=True)
        file.lock_path.unlink(missing_ok=True)
        os.close(file.lock_fd)

    def _release(self, file: _File) -> None:
        file.closed = True
        try:
            file.conn.close()  # the last connection checkpoints the WAL into the file
        finally:
            os.close(file.lock_fd)


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:

    mode = "rwc" if create else "rw"
    conn = sqlite3.connect(
        f"{path.as_uri()}?mode={mode}", uri=True, isolation_level=None, timeout=_BUSY_TIMEOUT
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


def _init_schema(conn: sqlite3.Connection) -> None:

    with transaction(conn):
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version == SCHEMA_VERSION:
            return
        if version != 0:
            raise OutboxError(
                f"outbox file version {version}, this build reads {SCHEMA_VERSION}",
                retryable=False,
            )
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _is_current(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not one deleted, or replaced, since)."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]


def _now() -> str:
    return datetime.now(UTC).isoformat()
