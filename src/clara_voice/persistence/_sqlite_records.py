"""Outbox records to SQLite rows, for the embedded store: pure validation, no I/O.

Each record kind (``turn``, ``participant``, ``session``) becomes one ``INSERT … ON
CONFLICT (record_key) DO NOTHING`` of :mod:`clara_voice.persistence.sqlite`'s schema; every
field is checked on the way (text, integers, finite numbers, ISO 8601 times normalized to
UTC, JSON of the right shape), and a record that does not fit is a non-retryable
:class:`~clara_voice.persistence.base.BackendError` (it goes to the dead letters).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from clara_voice.persistence.base import BackendError, OutboxRecord


@dataclass(frozen=True, slots=True)
class Insert:
    sql: str
    values: tuple[Any, ...]
    conversation_id: str
    room: str
    at: str  # the conversation's last activity


def prepare(record: OutboxRecord) -> Insert:
    payload = record.payload
    if not isinstance(payload, dict):
        raise _malformed(record, "the payload is not a JSON object")
    field = _Fields(record)
    conversation_id, room = field.text("conversation_id"), field.text("room")
    if record.kind == "turn":
        at = field.time("at")
        role = field.text("role")
        if role not in ("user", "assistant"):
            raise _malformed(record, f"role must be 'user' or 'assistant', got {role!r}")
        return Insert(
            "INSERT INTO messages (record_key, conversation_id, room, session_id, participant,"
            " seq, role, text, at, metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (record_key) DO NOTHING",
            (
                record.key,
                conversation_id,
                room,
                field.text("session_id"),
                field.text("participant"),
                field.integer("seq"),
                role,
                field.text("text", empty=True),
                at,
                field.json("metrics", dict, default={}),
            ),
            conversation_id=conversation_id,
            room=room,
            at=at,
        )
    if record.kind == "participant":
        at = field.time("at")
        event = field.text("event")
        if event not in ("connected", "disconnected"):
            raise _malformed(record, f"event must be 'connected' or 'disconnected', got {event!r}")
        return Insert(
            "INSERT INTO participant_events (record_key, conversation_id, room, participant,"
            " event, at, metadata) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (record_key) DO NOTHING",
            (
                record.key,
                conversation_id,
                room,
                field.text("participant"),
                event,
                at,
                field.json("metadata", object, default=None),
            ),
            conversation_id=conversation_id,
            room=room,
            at=at,
        )
    if record.kind == "session":
        ended_at = field.time("ended_at")
        return Insert(
            "INSERT INTO sessions (record_key, session_id, conversation_id, room, participant,"
            " message_count, participants, messages, started_at, ended_at, duration_s,"
            " first_seq, last_seq)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (record_key) DO NOTHING",
            (
                record.key,
                field.text("session_id"),
                conversation_id,
                room,
                field.text("participant"),
                field.integer("message_count"),
                field.json("participants", list),
                field.json("messages", list),
                field.time("started_at"),
                ended_at,
                field.number("duration_s"),
                field.optional_integer("first_seq"),
                field.optional_integer("last_seq"),
            ),
            conversation_id=conversation_id,
            room=room,
            at=ended_at,
        )
    raise _malformed(record, f"unknown record kind {record.kind!r}")


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

    def time(self, name: str) -> str:
        value = self.text(name)
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            raise _malformed(self._record, f"{name} is not an ISO 8601 time") from None
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        return at.astimezone(UTC).isoformat(timespec="microseconds")

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


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


__all__ = ["Insert", "now", "prepare"]
