"""The conversation's context from LiveKit's own state (seed 004), and its participants.

The room's metadata (JSON set by the backend that created the room: ``conversation_id``,
``user_id`` and any other keys) is the conversation's context: :func:`parse_room_metadata`
makes a :class:`RoomContext` of it. Missing metadata gives a fresh conversation id, and
malformed JSON, wrong types or an oversized value are one warning each and a fresh context,
never a crash. :class:`ParticipantState` is a participant as the job saw it.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from clara_voice._json import parse_json
from clara_voice.logging import ContextLogger

MAX_METADATA_BYTES = 64 * 1024
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


@dataclass(frozen=True, kw_only=True)
class RoomContext:
    """What the room's metadata says about the conversation."""

    conversation_id: str
    user_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Every other key of the metadata object."""
    known: bool = False
    """True when the metadata named the conversation (so earlier messages may exist)."""


def new_conversation_id() -> str:
    return f"conv_{uuid.uuid4().hex}"


def parse_room_metadata(raw: str, log: ContextLogger) -> RoomContext:
    """The room's context from its metadata; a fresh one (and a warning) when it is bad."""
    if not raw or not raw.strip():
        return RoomContext(conversation_id=new_conversation_id())
    if len(raw.encode("utf-8", "replace")) > MAX_METADATA_BYTES:
        log.warning(
            "room metadata too large, starting a fresh conversation",
            extra={"bytes": len(raw.encode("utf-8", "replace")), "limit": MAX_METADATA_BYTES},
        )
        return RoomContext(conversation_id=new_conversation_id())
    try:
        data = parse_json(raw)
    except ValueError as exc:
        log.warning(
            "room metadata is not JSON, starting a fresh conversation", extra={"error": str(exc)}
        )
        return RoomContext(conversation_id=new_conversation_id())
    if not isinstance(data, dict):
        log.warning(
            "room metadata is not a JSON object, starting a fresh conversation",
            extra={"type": type(data).__name__},
        )
        return RoomContext(conversation_id=new_conversation_id())
    conversation_id = data.pop("conversation_id", None)
    user_id = data.pop("user_id", None)
    if conversation_id is not None and not (
        isinstance(conversation_id, str) and _ID.match(conversation_id)
    ):
        log.warning(
            "room metadata has an invalid conversation_id, starting a fresh conversation",
            extra={"type": type(conversation_id).__name__},
        )
        return RoomContext(conversation_id=new_conversation_id())
    if user_id is not None and not isinstance(user_id, str | int):
        log.warning(
            "room metadata has an invalid user_id, ignoring it",
            extra={"type": type(user_id).__name__},
        )
        user_id = None
    return RoomContext(
        conversation_id=conversation_id or new_conversation_id(),
        user_id=None if user_id is None else str(user_id),
        extra=data,
        known=conversation_id is not None,
    )


@dataclass(kw_only=True)
class ParticipantState:
    """A participant of the room as the job saw it."""

    identity: str
    joined_at: datetime
    left_at: datetime | None = None
    metadata: str = ""

    def as_record(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "joined_at": self.joined_at.isoformat(),
            "left_at": self.left_at.isoformat() if self.left_at else None,
            "metadata": self.metadata,
        }
