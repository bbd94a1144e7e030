"""Records of one conversation, as the agent puts them, for the store tests; and a look
into a SQLite store's file from outside it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from clara_voice.persistence.base import OutboxRecord


def turn(
    seq: int, /, *, conversation: str = "c1", session: str = "s1", **changes: Any
) -> OutboxRecord:
    """A turn record; ``changes`` replace payload fields (``seq`` included)."""
    payload = {
        "conversation_id": conversation,
        "room": "room-1",
        "session_id": session,
        "participant": "alice",
        "seq": seq,
        "role": "user" if seq % 2 == 0 else "assistant",
        "text": f"message {seq}",
        "at": f"2025-01-01T10:00:{seq:02d}+00:00",
        "metrics": {"e2e_s": 0.8},
    } | changes
    return OutboxRecord(key=f"turn:{session}:{seq}", kind="turn", payload=payload)


def participant_event(event: str = "connected") -> OutboxRecord:
    return OutboxRecord(
        key=f"participant:c1:alice:{event}",
        kind="participant",
        payload={
            "conversation_id": "c1",
            "room": "room-1",
            "participant": "alice",
            "event": event,
            "at": "2025-01-01T10:00:00+00:00",
            "metadata": "",
        },
    )


def session_summary() -> OutboxRecord:
    return OutboxRecord(
        key="session:s1",
        kind="session",
        payload={
            "conversation_id": "c1",
            "room": "room-1",
            "session_id": "s1",
            "participant": "alice",
            "message_count": 2,
            "participants": [{"identity": "alice"}],
            "messages": [{"role": "user", "text": "hi"}],
            "started_at": "2025-01-01T10:00:00+00:00",
            "ended_at": "2025-01-01T10:05:00+00:00",
            "duration_s": 300.0,
        },
    )


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` on the SQLite file ``path``."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()
