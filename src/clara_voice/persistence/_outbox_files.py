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
import json
import os
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from clara_voice.persistence._outbox_schema import (
    NAME,
    connect,
    describe,
    init_schema,
    is_current,
    now,
    try_lock,
)
from clara_voice.persistence._sqlite_tx import transaction
from clara_voice.persistence.base import RECORD_KINDS, OutboxError, OutboxRecord

_PAGE = 100  # records read per round trip to the thread


@dataclass(frozen=True)
class _Row:
    key: str
    kind: str
    payload: str

    @property
    def size(self) -> int:
        return len(self.payload.encode())


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
    pending_bytes: int = 0
    dead_letters: int = 0
    error: str | None = None


@dataclass(frozen=True)
class _Pending:
    """One record waiting in a file, as the writer delivers it."""

    file: _File
    seq: int
    record: OutboxRecord
    size: int
    """Its payload's bytes."""
    created: float
    """When it was committed (seconds since the epoch)."""


@dataclass(frozen=True)
class _Page:
    file: _File | None
    rows: list[_Pending] = field(default_factory=list)
    """In delivery order."""
    retired: list[str] = field(default_factory=list)


class _Store:
    """The outbox's SQLite files: its own and the adopted ones. Used only on its thread."""

    def __init__(self, directory: Path, *, max_dead_letters: int = 10_000) -> None:
        self.directory = directory
        self.max_dead_letters = max_dead_letters
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
            conn = connect(db_path, create=True)
            init_schema(conn)
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
            if try_lock(fd) and is_current(fd, path):
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
                if not NAME.fullmatch(stem) or stem in taken:
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
                adoption = _Adoption(name, error=describe(exc))
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
        if not (try_lock(fd) and is_current(fd, lock_path)):
            os.close(fd)  # a live process holds it, or it was just deleted
            return None
        if not db_path.exists():  # another sweeper delivered and deleted it meanwhile
            lock_path.unlink(missing_ok=True)
            os.close(fd)
            return None
        conn: sqlite3.Connection | None = None
        try:
            conn = connect(db_path, create=False)
            init_schema(conn)  # a process killed while creating its file left it empty
            pending, pending_bytes = conn.execute(
                "SELECT count(*), coalesce(sum(length(CAST(payload AS BLOB))), 0) FROM records"
            ).fetchone()
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
            return _Adoption(name, error=describe(exc))
        self.adopted.append(_File(name, db_path, lock_path, fd, conn, own=False))
        return _Adoption(name, pending=pending, pending_bytes=pending_bytes, dead_letters=len(dead))

    def _remove_stale_lock(self, name: str) -> None:
        # a lock file without its .db: its owner died before creating the file, or after
        # deleting it; a starting owner re-checks its lock after locking (see _new_lock)
        lock_path = self.directory / f"{name}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            if try_lock(fd) and is_current(fd, lock_path):
                db_path = self.directory / f"{name}.db"
                if not db_path.exists():
                    for suffix in ("-wal", "-shm"):
                        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
                    lock_path.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def commit(self, rows: list[_Row]) -> tuple[int, int]:
        """Insert ``rows`` in one transaction; how many were new keys, and their bytes."""
        assert self.own is not None
        created_at = now()
        count = size = 0
        with transaction(self.own.conn):
            for row in rows:
                cursor = self.own.conn.execute(
                    "INSERT INTO records (key, kind, payload, created_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (key) DO NOTHING",
                    (row.key, row.kind, row.payload, created_at),
                )
                if cursor.rowcount:
                    count += 1
                    size += row.size
        return count, size

    def next_page(self, delivered: list[tuple[_File, int, str]]) -> _Page:
        """Forget ``delivered``, then the next records to deliver: adopted files first."""
        self.forget(delivered)
        assert self.own is not None
        retired: list[str] = []
        for file in [*self.adopted, self.own]:
            rows = file.conn.execute(
                "SELECT seq, key, kind, payload, created_at FROM records ORDER BY seq LIMIT ?",
                (_PAGE,),
            ).fetchall()
            if rows:
                return _Page(file, [_pending(file, *row) for row in rows], retired)
            if not file.own:
                self.adopted.remove(file)
                self._retire(file)
                retired.append(file.name)
        return _Page(None, [], retired)

    def after(self, file: _File, seq: int) -> _Pending | None:
        """The first record to deliver after ``file``'s ``seq``: in that file, or the next."""
        assert self.own is not None
        files = [*self.adopted, self.own]
        for later in files[files.index(file) :] if file in files else []:
            row = later.conn.execute(
                "SELECT seq, key, kind, payload, created_at FROM records WHERE seq > ?"
                " ORDER BY seq LIMIT 1",
                (seq if later is file else -1,),
            ).fetchone()
            if row is not None:
                return _pending(later, *row)
        return None

    def dead_letter(self, file: _File, seq: int, key: str, error: str) -> int:
        """Move one record to the dead letters of this instance's own file; how many of the
        oldest dead letters were dropped to keep them within ``max_dead_letters``."""
        assert self.own is not None
        own = self.own.conn
        row = file.conn.execute(
            "SELECT key, kind, payload, created_at FROM records WHERE seq = ? AND key = ?",
            (seq, key),
        ).fetchone()
        if row is None:
            return 0
        with transaction(own):
            own.execute(
                "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?)",
                (*row[:3], error, row[3], now()),
            )
            if file.own:
                own.execute("DELETE FROM records WHERE seq = ? AND key = ?", (seq, key))
            dropped = own.execute(
                "DELETE FROM dead_letters WHERE rowid IN (SELECT rowid FROM dead_letters"
                " ORDER BY failed_at DESC, rowid DESC LIMIT -1 OFFSET ?)",
                (self.max_dead_letters,),
            ).rowcount
        if not file.own:  # a crash in between leaves it in both: it is refused again, no loss
            with transaction(file.conn):
                file.conn.execute("DELETE FROM records WHERE seq = ? AND key = ?", (seq, key))
        return max(dropped, 0)

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


def _pending(file: _File, seq: int, key: str, kind: str, payload: str, created: str) -> _Pending:
    try:
        at = datetime.fromisoformat(created).timestamp()
    except ValueError:
        at = 0.0  # unknown: as old as can be
    record = OutboxRecord(key=key, kind=kind, payload=json.loads(payload))  # type: ignore[arg-type]
    return _Pending(file, seq, record, len(payload.encode()), at)


def encode_record(record: OutboxRecord) -> _Row:
    """``record`` as a row of an outbox file; TypeError or ValueError when it cannot be."""
    if not isinstance(record, OutboxRecord):
        raise TypeError(f"expected an OutboxRecord, got {type(record).__name__}")
    if not record.key:
        raise ValueError("the record has no key")
    if record.kind not in RECORD_KINDS:
        raise ValueError(f"unknown record kind {record.kind!r}")
    if not isinstance(record.payload, dict):
        raise TypeError("the payload must be a JSON object")
    payload = json.dumps(record.payload, ensure_ascii=False, allow_nan=False)
    return _Row(record.key, record.kind, payload)
