"""The wire side of session synchronization (seed 003): names, the config, the payloads.

Everything a client sees of :mod:`clara_voice.sync` is defined here, and documented for
client authors in docs/client-protocol.md: the :class:`SessionConfig` the agent keeps
per session, the versioned JSON it publishes (agent attributes and the ``clara.sync`` data
topic), how a change request is parsed, and the per-participant rate limit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from clara_voice._json import parse_json
from clara_voice.states import SESSION_TYPES, ConnectionState, SessionType
from clara_voice.voice.turns import SESSION_TYPE_CONFIGS, TurnDetectionKind

PROTOCOL_VERSION: Final = 1
SYNC_TOPIC: Final = "clara.sync"
RPC_SET_SESSION_TYPE: Final = "clara.set_session_type"
SESSION_ATTRIBUTE_PREFIX: Final = "clara.session."
"""The agent's attribute ``clara.session.<identity>`` holds that participant's config."""

MAX_REQUEST_BYTES: Final = 1024
"""Largest RPC payload or ``clara.session_type`` value a change request may carry."""

SessionState = Literal["idle", "active", "syncing", "ending", "error"]
TurnDetection = TurnDetectionKind
VoiceMode = Literal["push-to-talk", "continuous"]
SyncEventType = Literal[
    "session_state_sync", "room_state_change", "connection_interruption", "session_inconsistency"
]
Microphone = Literal["unmuted", "muted", "absent"]

TURN_DETECTION: Final[Mapping[SessionType, TurnDetection]] = {
    session_type: config.turn_detection for session_type, config in SESSION_TYPE_CONFIGS.items()
}
VOICE_MODE: Final[Mapping[SessionType, VoiceMode | None]] = {
    "text": None,
    "voice-ptt": "push-to-talk",
    "voice-vad": "continuous",
}
STATE_OF: Final[Mapping[ConnectionState, SessionState]] = {
    "connecting": "idle",
    "connected": "active",
    "reconnecting": "syncing",
    "error": "error",
    "closed": "ending",
}
"""The session state the agent's connection_state stands for."""


def epoch_ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


@dataclass(kw_only=True, eq=False)
class SessionConfig:
    """The agent's view of one session, as published to the room (seed 003's SessionConfig).

    ``turn_detection``, ``voice_mode`` and ``voice_activity_enabled`` follow from ``type``;
    :meth:`retype` keeps them in step and validation corrects them if they drift.
    """

    type: SessionType
    room_id: str
    state: SessionState = "idle"
    started_at: datetime | None = None
    is_muted: bool | None = None
    """Voice sessions: whether the participant has no unmuted microphone; text: ``None``."""
    last_sync_at: datetime | None = None
    sync_attempts: int = 0
    inconsistency_detected: bool = False
    turn_detection: TurnDetection = field(init=False)
    voice_mode: VoiceMode | None = field(init=False)
    voice_activity_enabled: bool = field(init=False)

    def __post_init__(self) -> None:
        self.retype(self.type)

    def retype(self, session_type: SessionType) -> None:
        """Switch to ``session_type`` with the turn detection and voice mode it implies."""
        self.type = session_type
        self.turn_detection = TURN_DETECTION[session_type]
        self.voice_mode = VOICE_MODE[session_type]
        self.voice_activity_enabled = SESSION_TYPE_CONFIGS[session_type].voice_activity
        if session_type == "text":
            self.is_muted = None

    @property
    def is_voice(self) -> bool:
        return self.type != "text"

    def fingerprint(self) -> tuple[Any, ...]:
        """Every field, cheaply: equal fingerprints give equal :meth:`to_json`."""
        return (
            self.type,
            self.state,
            self.started_at,
            self.voice_mode,
            self.is_muted,
            self.turn_detection,
            self.room_id,
            self.last_sync_at,
            self.sync_attempts,
            self.inconsistency_detected,
            self.voice_activity_enabled,
        )

    def to_json(self) -> dict[str, Any]:
        """The config as the client reads it (timestamps in ms since the Unix epoch)."""
        return {
            "type": self.type,
            "state": self.state,
            "started_at": None if self.started_at is None else epoch_ms(self.started_at),
            "voice_mode": self.voice_mode,
            "is_muted": self.is_muted,
            "turn_detection": self.turn_detection,
            "room_id": self.room_id,
            "last_sync_at": None if self.last_sync_at is None else epoch_ms(self.last_sync_at),
            "sync_attempts": self.sync_attempts,
            "inconsistency_detected": self.inconsistency_detected,
            "voice_activity_enabled": self.voice_activity_enabled,
        }


def encode(message: Mapping[str, Any]) -> str:
    """Compact JSON, the form of every payload the agent sends."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def sync_event(
    event_type: SyncEventType,
    *,
    session_id: str,
    participant: str,
    config: SessionConfig,
    trigger: str,
    room_state: Mapping[str, Any] | None = None,
    issues: list[str] | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """One message of the ``clara.sync`` topic: ``{"v": 1, "type": ..., "payload": {...}}``."""
    payload: dict[str, Any] = {
        "session_id": session_id,
        "participant": participant,
        "config": config.to_json(),
        "timestamp": epoch_ms(at or datetime.now(UTC)),
        "trigger": trigger,
    }
    if room_state is not None:
        payload["room_state"] = dict(room_state)
    if issues:
        payload["issues"] = list(issues)
    return {"v": PROTOCOL_VERSION, "type": event_type, "payload": payload}


# -- change requests ---------------------------------------------------------------------

RequestErrorCode = Literal[
    "malformed_request",
    "payload_too_large",
    "unknown_type",
    "not_authorized",
    "no_session",
    "session_not_active",
    "rate_limited",
    "reconfigure_failed",
]


class RequestError(Exception):
    """A change request refused; ``code`` is what the client gets to branch on."""

    def __init__(self, code: RequestErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: RequestErrorCode = code
        self.message = message

    def to_json(self) -> str:
        return encode({"v": PROTOCOL_VERSION, "error": self.code, "message": self.message})


def parse_session_type(value: object) -> SessionType:
    """``value`` as a session type, or :class:`RequestError`."""
    if not isinstance(value, str):
        raise RequestError("malformed_request", "the session type must be a string")
    for session_type in SESSION_TYPES:
        if value == session_type:
            return session_type
    shown = value[:32].encode("unicode_escape").decode("ascii")
    raise RequestError(
        "unknown_type", f"unknown session type {shown!r}; expected one of {list(SESSION_TYPES)}"
    )


def check_size(text: str) -> None:
    if len(text) > MAX_REQUEST_BYTES or len(text.encode("utf-8", "replace")) > MAX_REQUEST_BYTES:
        raise RequestError(
            "payload_too_large", f"requests are limited to {MAX_REQUEST_BYTES} bytes"
        )


@dataclass(frozen=True, kw_only=True)
class TypeRequest:
    """A parsed ``clara.set_session_type`` payload."""

    type: SessionType
    session_id: str | None = None


def parse_type_request(payload: str) -> TypeRequest:
    """Parse ``{"type": "voice-ptt"}`` (optionally with ``"session_id"``); unknown keys are
    ignored so newer clients can talk to this agent."""
    check_size(payload)
    try:
        message = parse_json(payload)
    except ValueError as exc:
        raise RequestError("malformed_request", "the payload is not JSON") from exc
    if not isinstance(message, dict):
        raise RequestError("malformed_request", 'the payload must be a JSON object {"type": ...}')
    if "type" not in message:
        raise RequestError("malformed_request", 'the payload has no "type"')
    session_id = message.get("session_id")
    if session_id is not None and not isinstance(session_id, str):
        raise RequestError("malformed_request", '"session_id" must be a string')
    return TypeRequest(type=parse_session_type(message["type"]), session_id=session_id)
