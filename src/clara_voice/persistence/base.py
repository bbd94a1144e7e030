"""What persistence stores and the Backend protocol every store implements (seed 004).

The agent never talks to a backend directly on the audio path: it puts
:class:`OutboxRecord`s into the durable outbox (outbox.py), which commits them locally,
acknowledges them, and delivers them to the :class:`Backend` from one writer task. Every
record has an idempotency ``key``, so a retry or a replay after a crash never stores a
record twice: a backend must treat a key it has already stored as success.

History is per participant per conversation: a room may hold several people, each with
a private conversation with Clara, so a backend keeps the ``participant`` of every turn
and loads history by (conversation, participant).

Record kinds and their payloads (JSON objects):

``turn``
    ``{"conversation_id", "room", "session_id", "participant", "seq", "role", "text",
    "at", "metrics"}`` — one user or assistant message of ``participant``'s conversation;
    ``seq`` orders a session's messages, ``at`` is ISO 8601 UTC, ``metrics`` holds the
    turn's latencies in seconds.
``participant``
    ``{"conversation_id", "room", "participant", "event", "at", "metadata"}`` with
    ``event`` ``"connected"`` or ``"disconnected"``.
``session``
    ``{"conversation_id", "room", "session_id", "participant", "message_count",
    "participants", "messages", "started_at", "ended_at", "duration_s"}`` — the summary
    saved when a session is cleaned up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

RecordKind = Literal["turn", "participant", "session"]
RECORD_KINDS: tuple[RecordKind, ...] = ("turn", "participant", "session")


class BackendError(Exception):
    """A backend call failed. ``retryable`` says whether the same call may succeed later
    (down, slow, 5xx) or never will (a 4xx refusing the record); ``status`` is the HTTP
    status when there was one (401 and 403 mean the credentials are wrong)."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status

    @property
    def credentials_refused(self) -> bool:
        return self.status in (401, 403)


class OutboxError(Exception):
    """The outbox could not take a record (closed, not JSON, the local file failed)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, kw_only=True)
class OutboxRecord:
    """One write waiting in (or delivered from) the outbox."""

    key: str
    """Idempotency key, unique per record (e.g. ``turn:<session_id>:<seq>``)."""
    kind: RecordKind
    payload: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class StoredMessage:
    """A message of an earlier session, as loaded to continue a conversation."""

    role: Literal["user", "assistant"]
    text: str
    at: str
    participant: str
    """The identity whose conversation with Clara the message belongs to (the user's
    words and Clara's answers to that user alike)."""


class Backend(Protocol):
    """A conversation store: the embedded SQLite one or a team's own over HTTP."""

    async def agent_joined(self, *, room: str, conversation_id: str) -> str:
        """The agent joined ``room``; returns the conversation id to use (the backend may
        confirm the proposed one or answer its own)."""
        ...

    async def get_recent_messages(
        self, conversation_id: str, limit: int, *, participant: str
    ) -> list[StoredMessage]:
        """The last ``limit`` messages of ``participant``'s history in a conversation,
        oldest first: its own words and Clara's answers to it, never another
        participant's (history is per participant per conversation)."""
        ...

    async def deliver(self, record: OutboxRecord) -> None:
        """Store one record; a key already stored is success. Raises :class:`BackendError`."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads; idempotent."""
        ...


__all__ = [
    "RECORD_KINDS",
    "Backend",
    "BackendError",
    "OutboxError",
    "OutboxRecord",
    "RecordKind",
    "StoredMessage",
]
