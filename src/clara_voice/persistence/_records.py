"""Outbox records to table rows, for every store: pure validation, no I/O.

Each record kind (``turn``, ``participant``, ``session``) becomes one :class:`Row` of the
stores' common table layout (``messages``, ``participant_events``, ``sessions``; the
schemas are in :mod:`~clara_voice.persistence.sqlite` and
:mod:`~clara_voice.persistence._postgres_schema`). Every field is checked on the way
(text, integers, finite numbers, ISO 8601 times normalized to UTC, JSON of the right
shape), and a record that does not fit is a non-retryable
:class:`~clara_voice.persistence.base.BackendError` (it goes to the dead letters), in the
same words whichever store refused it.

Values are storage-neutral: ``str``, ``int``, ``float``, ``None``, aware UTC
``datetime``s for times, and JSON as text. :func:`insert_sql` writes the one ``INSERT …
ON CONFLICT (record_key) DO NOTHING`` both stores run (a key already stored is a success
that stores nothing), given the store's parameter style.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from clara_voice.persistence.base import BackendError, OutboxRecord


@dataclass(frozen=True, slots=True)
class Row:
    """One record as a row of ``table``: its columns and their values, in order."""

    table: str
    columns: tuple[str, ...]
    values: tuple[Any, ...]
    conversation_id: str
    room: str
    at: datetime
    """The conversation's last activity, as of this record."""


def parse(record: OutboxRecord) -> Row:
    """The row ``record`` is stored as; :class:`BackendError` (not retryable) if malformed."""
    payload = record.payload
    if not isinstance(payload, dict):
        raise _malformed(record, "the payload is not a JSON object")
    field = _Fields(record)
    conversation_id, room = field.text("conversation_id"), field.text("room")
    columns: dict[str, Any] = {"record_key": record.key, "conversation_id": conversation_id}
    if record.kind == "turn":
        at = field.time("at")
        role = field.text("role")
        if role not in ("user", "assistant"):
            raise _malformed(record, f"role must be 'user' or 'assistant', got {role!r}")
        table = "messages"
        columns |= {
            "room": room,
            "session_id": field.text("session_id"),
            "participant": field.text("participant"),
            "seq": field.integer("seq"),
            "role": role,
            "text": field.text("text", empty=True),
            "at": at,
            "metrics": field.json("metrics", dict, default={}),
        }
    elif record.kind == "participant":
        at = field.time("at")
        event = field.text("event")
        if event not in ("connected", "disconnected"):
            raise _malformed(record, f"event must be 'connected' or 'disconnected', got {event!r}")
        table = "participant_events"
        columns |= {
            "room": room,
            "participant": field.text("participant"),
            "event": event,
            "at": at,
            "metadata": field.json("metadata", object, default=None),
        }
    elif record.kind == "session":
        at = field.time("ended_at")
        table = "sessions"
        columns |= {
            "session_id": field.text("session_id"),
            "room": room,
            "participant": field.text("participant"),
            "message_count": field.integer("message_count"),
            "participants": field.json("participants", list),
            "messages": field.json("messages", list),
            "started_at": field.time("started_at"),
            "ended_at": at,
            "duration_s": field.number("duration_s"),
            "first_seq": field.optional_integer("first_seq"),
            "last_seq": field.optional_integer("last_seq"),
        }
    else:
        raise _malformed(record, f"unknown record kind {record.kind!r}")
    return Row(
        table=table,
        columns=tuple(columns),
        values=tuple(columns.values()),
        conversation_id=conversation_id,
        room=room,
        at=at,
    )


def insert_sql(row: Row, placeholder: Callable[[int], str]) -> str:
    """The idempotent ``INSERT`` of ``row``; ``placeholder(n)`` is the store's n-th
    parameter (1-based: ``?`` for SQLite, ``$n`` for PostgreSQL)."""
    params = ", ".join(placeholder(n) for n in range(1, len(row.columns) + 1))
    return (
        f"INSERT INTO {row.table} ({', '.join(row.columns)}) VALUES ({params})"
        " ON CONFLICT (record_key) DO NOTHING"
    )


def iso(at: datetime) -> str:
    """``at`` as the stores' ISO 8601 text: UTC, microseconds, ``+00:00``."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def now() -> datetime:
    return datetime.now(UTC)


def check_names(room: object, conversation_id: object) -> None:
    """What ``agent_joined`` takes: strings (an empty conversation id asks for a new one)."""
    if not isinstance(room, str) or not isinstance(conversation_id, str):
        raise BackendError("room and conversation_id must be strings", retryable=False)


class _Fields:
    """Typed reads of a record's payload; a bad field is a non-retryable BackendError."""

    def __init__(self, record: OutboxRecord) -> None:
        self._record = record
        self._payload = record.payload

    def _get(self, name: str) -> Any:
        if name not in self._payload:
            raise _malformed(self._record, f"{name} is missing")
        return self._payload[name]

    def text(self, name: str, *, empty: bool = False) -> str:
        value = self._get(name)
        if not isinstance(value, str) or (not empty and not value):
            raise _malformed(self._record, f"{name} must be a non-empty string")
        return value

    def integer(self, name: str) -> int:
        value = self._get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _malformed(self._record, f"{name} must be a non-negative integer")
        return value

    def optional_integer(self, name: str) -> int | None:
        """A non-negative integer, or None when missing or null (older records have none)."""
        return None if self._payload.get(name) is None else self.integer(name)

    def number(self, name: str) -> float:
        value = self._get(name)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise _malformed(self._record, f"{name} must be a number")
        return float(value)

    def time(self, name: str) -> datetime:
        value = self.text(name)
        try:
            at = datetime.fromisoformat(value)
            return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
        except (ValueError, OverflowError):  # overflow: a year-1 time east of UTC
            raise _malformed(self._record, f"{name} is not an ISO 8601 time") from None

    def json(self, name: str, kind: type, *, default: Any = ...) -> str:
        if name not in self._payload and default is not ...:
            value = default
        else:
            value = self._get(name)
            if not isinstance(value, kind):
                raise _malformed(self._record, f"{name} must be a JSON {kind.__name__}")
        try:
            return json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise _malformed(self._record, f"{name} is not JSON: {exc}") from None


def _malformed(record: OutboxRecord, problem: str) -> BackendError:
    return BackendError(f"{record.kind} record {record.key!r}: {problem}", retryable=False)


__all__ = ["Row", "check_names", "insert_sql", "iso", "now", "parse"]
