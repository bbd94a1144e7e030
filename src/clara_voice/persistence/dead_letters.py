"""The outbox's files for an operator: what is waiting, what was refused, and replaying it.

Read straight from the outbox folder (``<data dir>/outbox``), while workers run or not:
each file is SQLite in WAL mode, so reading never waits for a writer, and a file whose
lock is held belongs to a live process (``live``). A dead letter is a record the backend
refused for good, or whose delivery failed at every attempt with an unexpected error; it
stays in its file until it is replayed: delivered again through a backend, and removed
from the dead letters once the backend took it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clara_voice.persistence._outbox_schema import NAME, connect, is_current, try_lock
from clara_voice.persistence._sqlite_tx import transaction
from clara_voice.persistence.base import Backend, OutboxRecord


@dataclass(frozen=True, kw_only=True)
class OutboxFile:
    """One outbox file: its records waiting for delivery, and its dead letters."""

    name: str
    live: bool
    """Held by a running worker process (else an ended one's, adopted at the next start)."""
    pending: int
    pending_bytes: int
    dead_letters: int


@dataclass(frozen=True, kw_only=True)
class DeadLetter:
    """A record that could not be delivered, and why."""

    file: str
    key: str
    kind: str
    payload: dict[str, Any]
    error: str
    created_at: str
    failed_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "payload": self.payload,
            "error": self.error,
            "created_at": self.created_at,
            "failed_at": self.failed_at,
            "file": self.file,
        }


def outbox_files(directory: Path) -> list[OutboxFile]:
    """Every outbox file in ``directory`` (``<data dir>/outbox``), oldest first."""
    files = []
    for name, path in _files(directory):
        with contextlib.closing(connect(path, create=False)) as conn:
            pending, size = conn.execute(
                "SELECT count(*), coalesce(sum(length(CAST(payload AS BLOB))), 0) FROM records"
            ).fetchone()
            (dead,) = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
        files.append(
            OutboxFile(
                name=name,
                live=_is_live(directory, name),
                pending=pending,
                pending_bytes=size,
                dead_letters=dead,
            )
        )
    return files


def dead_letters(directory: Path) -> Iterator[DeadLetter]:
    """Every dead letter of every file, oldest failure first within a file."""
    for name, path in _files(directory):
        with contextlib.closing(connect(path, create=False)) as conn:
            rows = conn.execute(
                "SELECT key, kind, payload, error, created_at, failed_at FROM dead_letters"
                " ORDER BY failed_at, key"
            ).fetchall()
        for key, kind, payload, error, created_at, failed_at in rows:
            yield DeadLetter(
                file=name,
                key=key,
                kind=kind,
                payload=json.loads(payload),
                error=error,
                created_at=created_at,
                failed_at=failed_at,
            )


async def replay(letter: DeadLetter, directory: Path, backend: Backend) -> None:
    """Deliver ``letter`` through ``backend``; once it took it, remove the dead letter.

    Raises what the backend raises (the dead letter then stays)."""
    record = OutboxRecord(key=letter.key, kind=letter.kind, payload=letter.payload)  # type: ignore[arg-type]
    await backend.deliver(record)
    path = directory / f"{letter.file}.db"
    with contextlib.closing(connect(path, create=False)) as conn, transaction(conn):
        conn.execute("DELETE FROM dead_letters WHERE key = ?", (letter.key,))


def _files(directory: Path) -> list[tuple[str, Path]]:
    if not directory.is_dir():
        return []
    found = []
    for entry in os.scandir(directory):
        stem, _, suffix = entry.name.partition(".")
        if suffix == "db" and NAME.fullmatch(stem):
            found.append((entry.stat().st_mtime, stem, Path(entry.path)))
    return [(name, path) for _, name, path in sorted(found)]


def _is_live(directory: Path, name: str) -> bool:
    lock = directory / f"{name}.lock"
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        # taken at once and let go: a running process holds it for its whole life
        return not (try_lock(fd) and is_current(fd, lock))
    finally:
        os.close(fd)


__all__ = ["DeadLetter", "OutboxFile", "dead_letters", "outbox_files", "replay"]
