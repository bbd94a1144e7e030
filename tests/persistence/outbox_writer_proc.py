"""A job process that dies holding acknowledged records (run by test_crash_recovery).

``python -m tests.outbox_writer_proc <data dir> <sessions> <turns> [<database URL>]``
opens an :class:`~clara_voice.persistence.outbox.Outbox` on ``<data dir>`` whose backend is
down (every delivery fails, retryably), or, given a PostgreSQL URL, the real store there
(records are delivered as they come), then puts ``<turns>`` numbered turn records for each
of ``<sessions>`` sessions, one writer task per session, and prints each record's key to
stdout (flushed) as soon as its ``put`` returns, i.e. once it is acknowledged. It then
waits, holding its outbox, until it is killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from pydantic import SecretStr

from clara_voice.persistence.base import Backend, BackendError, OutboxRecord, StoredMessage
from clara_voice.persistence.outbox import Outbox
from clara_voice.persistence.postgres import PostgresBackend


class DownBackend:
    """A backend that cannot be reached."""

    async def agent_joined(self, *, room: str, conversation_id: str) -> str:
        raise BackendError("backend unreachable", retryable=True)

    async def get_recent_messages(
        self, conversation_id: str, limit: int, *, participant: str
    ) -> list[StoredMessage]:
        raise BackendError("backend unreachable", retryable=True)

    async def deliver(self, record: OutboxRecord) -> None:
        raise BackendError("backend unreachable", retryable=True)

    async def aclose(self) -> None:
        pass


def turn(session: str, seq: int) -> OutboxRecord:
    """Turn ``seq`` of ``session`` (the payload the SQLite backend stores)."""
    return OutboxRecord(
        key=f"turn:{session}:{seq}",
        kind="turn",
        payload={
            "conversation_id": f"conv-{session}",
            "room": "room-1",
            "session_id": session,
            "participant": f"user-{session}",
            "seq": seq,
            "role": "user" if seq % 2 == 0 else "assistant",
            "text": f"{session} says {seq}",
            "at": f"2025-01-01T10:{seq // 60 % 60:02d}:{seq % 60:02d}+00:00",
            "metrics": {},
        },
    )


async def main(directory: Path, sessions: int, turns: int, database_url: str | None) -> None:
    backend: Backend = (
        PostgresBackend(SecretStr(database_url)) if database_url is not None else DownBackend()
    )
    outbox = Outbox(directory, backend, retry_base=0.05, retry_max=0.2, sweep_interval=None)
    await outbox.start()

    async def write(session: str) -> None:
        for seq in range(turns):
            record = turn(session, seq)
            await outbox.put(record)
            sys.stdout.write(record.key + "\n")
            sys.stdout.flush()

    await asyncio.gather(*(write(f"s{n}") for n in range(sessions)))
    await asyncio.Event().wait()  # hold the outbox (and its lock) until killed


if __name__ == "__main__":
    url = sys.argv[4] if len(sys.argv) > 4 else None
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), url))
