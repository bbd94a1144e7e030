"""Checking a session's config against the room (seed 003's validation rules).

:func:`check` compares one session's :class:`SessionRecord` with what the room and the
session say now, corrects the config where the agent knows better (its state, room id,
type, and what the type implies), and flags what it cannot correct (a pipeline doing
something else than its type, a voice session without an unmuted microphone). A flag is
reported once, when it first appears.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Literal

from livekit import rtc

from clara_voice.states import SESSION_TYPES, SessionType
from clara_voice.sync.protocol import STATE_OF, Microphone, SessionConfig
from clara_voice.sync.seams import SyncedSession
from clara_voice.voice.turns import expected_effective

RoomLink = Literal["connected", "reconnecting", "disconnected"]
# audio input is live state (a push-to-talk session hears only during a turn): not compared
_compared = operator.itemgetter(
    "session_type", "turn_detection", "voice_activity_enabled", "audio_output_enabled"
)
"""What of a pipeline's effective config must match its type (its live input may not)."""


@dataclass(eq=False)
class SessionRecord:
    """Sync's record of one session: its config, the flags it carries, and a type the
    client asked for while the session could not switch yet."""

    config: SessionConfig
    flags: frozenset[str] = frozenset()
    pending_type: SessionType | None = None


@dataclass
class Finding:
    """What one check found."""

    issues: list[str] = field(default_factory=list)
    corrected: bool = False
    flagged: frozenset[str] = frozenset()
    microphone: Microphone = "absent"
    present: bool = False
    unreadable_pipeline: Exception | None = None


_MICROPHONE = rtc.TrackSource.SOURCE_MICROPHONE  # protobuf enum lookups are not free
_IMPLIED = {
    session_type: (
        (config := SessionConfig(type=session_type, room_id="")).turn_detection,
        config.voice_mode,
        config.voice_activity_enabled,
    )
    for session_type in SESSION_TYPES
}
"""What each session type implies of turn detection, voice mode and voice activity."""
_EXPECTED = {t: _compared(expected_effective(t)) for t in SESSION_TYPES}


def microphone_of(room: rtc.Room, identity: str) -> Microphone:
    """``unmuted``, ``muted`` or ``absent``: the participant's microphone as the room has it."""
    participant = room.remote_participants.get(identity)
    if participant is None:
        return "absent"
    muted = False
    for publication in participant.track_publications.values():
        if publication.source == _MICROPHONE:
            if not publication.muted:
                return "unmuted"
            muted = True
    return "muted" if muted else "absent"


def room_state(
    room: rtc.Room, link: RoomLink, microphone: Microphone, present: bool
) -> dict[str, Any]:
    """The room's view, next to the agent's config in events."""
    return {
        "room_id": room.name,
        "connection": link,
        "participant_present": present,
        "microphone": microphone,
    }


def check(
    session: SyncedSession, record: SessionRecord, *, room: rtc.Room, link: RoomLink
) -> Finding:
    """Correct ``record``'s config from the room and the session; what was found."""
    config = record.config
    finding = Finding(present=session.participant_id in room.remote_participants)
    expected = STATE_OF[session.connection_state]
    if expected == "active" and link == "disconnected":
        expected, issue = "error", "room_disconnected"
    elif expected == "active" and not finding.present:
        expected, issue = "error", "participant_gone"
    else:
        issue = "state_mismatch"
    if config.state != expected:
        finding.issues.append(issue)
        config.state = expected
        finding.corrected = True
    if config.room_id != room.name:
        finding.issues.append("room_id_mismatch")
        config.room_id = room.name
        finding.corrected = True
    if config.type != session.session_type:
        finding.issues.append("type_mismatch")
        config.retype(session.session_type)
        finding.corrected = True
    if (config.turn_detection, config.voice_mode, config.voice_activity_enabled) != _IMPLIED[
        config.type
    ]:
        finding.issues.append("turn_detection_mismatch")
        config.retype(config.type)
        finding.corrected = True

    finding.microphone = microphone_of(room, session.participant_id)
    flags: set[str] = set()
    if _pipeline_drifted(session, config, finding):
        flags.add("pipeline_mismatch")
    if config.is_voice:
        config.is_muted = finding.microphone != "unmuted"
        if config.state == "active" and finding.microphone != "unmuted":
            flags.add(f"microphone_{finding.microphone}")
    finding.issues.extend(sorted(flags - record.flags))
    finding.flagged = frozenset(flags)
    record.flags = finding.flagged
    if finding.corrected:
        config.sync_attempts += 1
    return finding


def _pipeline_drifted(session: SyncedSession, config: SessionConfig, finding: Finding) -> bool:
    """Whether the pipeline does something else than the config's type says (the agent
    cannot force it back: it is flagged, and logged, for a person to look at)."""
    if session.pipeline is None or session.connection_state != "connected":
        return False
    try:
        effective = session.pipeline.effective()
    except Exception as exc:
        finding.unreadable_pipeline = exc
        return False
    return bool(_compared(effective) != _EXPECTED[config.type])


__all__ = ["Finding", "RoomLink", "SessionRecord", "check", "microphone_of", "room_state"]
