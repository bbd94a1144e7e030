"""Reconnection, server side (seed 001): riding out network trouble.

Owned by ClaraVoiceAgent, which gives it the session registry (where the sessions and
their states live), the agent's metrics, and one call back: ending a session. It watches
three things:

- a participant's connection quality: POOR or LOST moves its session to ``reconnecting``
  (one attempt counted per move); GOOD or EXCELLENT moves it back to ``connected``. Quality
  alone never ends the session of a participant who is still in the room, and never
  touches its media: a microphone stream that works is left alone;
- a participant's disconnect that was not its own choice (network loss, timeout, signal
  close, migration…): the session is *held* in ``reconnecting`` for the grace period; if
  the same identity comes back in time, the same session resumes (same id, same history);
  otherwise it is cleaned up. The pipeline's media follows the identity by itself
  (livekit's RoomIO picks the returning participant's new track up);
- the agent's own room connection: ``reconnecting`` moves every live session to
  ``reconnecting``, ``reconnected`` moves back the ones it moved (a participant whose own
  link is poor stays ``reconnecting``), ``disconnected`` cleans everything up.

More than ``CLARA_MAX_RECONNECTION_ATTEMPTS`` drops without a recovery, or a grace period
that runs out, ends the session with a full cleanup (its summary persisted).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from livekit import rtc

from clara_voice import telemetry
from clara_voice.agent.metrics import PerformanceMetrics
from clara_voice.agent.registry import SessionRegistry
from clara_voice.agent.session import ParticipantSession
from clara_voice.config import Settings
from clara_voice.logging import ContextLogger

EndSession = Callable[..., object]
"""``end_session(session_id, reason=...)``: clean a session up soon (the agent's)."""

# disconnects that are someone's decision, not the network's: the session ends at once
DELIBERATE = frozenset(
    {
        rtc.DisconnectReason.CLIENT_INITIATED,
        rtc.DisconnectReason.ROOM_DELETED,
        rtc.DisconnectReason.PARTICIPANT_REMOVED,
        rtc.DisconnectReason.USER_REJECTED,
        rtc.DisconnectReason.ROOM_CLOSED,
    }
)
BAD_QUALITY = frozenset({rtc.ConnectionQuality.QUALITY_POOR, rtc.ConnectionQuality.QUALITY_LOST})
GOOD_QUALITY = frozenset(
    {rtc.ConnectionQuality.QUALITY_GOOD, rtc.ConnectionQuality.QUALITY_EXCELLENT}
)


def is_deliberate(participant: rtc.Participant) -> bool:
    """Whether the participant's disconnect was a choice (its own or the room's)."""
    return participant.disconnect_reason in DELIBERATE


class Reconnection:
    """Grace timers, quality watch and the agent's own link, for one room job."""

    def __init__(
        self,
        room: rtc.Room,
        registry: SessionRegistry,
        metrics: PerformanceMetrics,
        settings: Settings,
        log: ContextLogger,
        *,
        end_session: EndSession,
    ) -> None:
        self._room = room
        self._registry = registry
        self._metrics = metrics
        self._end_session = end_session
        self._settings = settings
        self._log = log
        self._grace: dict[str, asyncio.TimerHandle] = {}
        self._room_down = False
        self._moved_by_room: set[str] = set()
        """Sessions the agent's own lost link put in ``reconnecting``: only these go back to
        ``connected`` when it comes back (a participant's own poor link stays)."""
        self._started = False

    def start(self) -> None:
        self._started = True
        self._room.on("connection_quality_changed", self._on_quality)
        self._room.on("reconnecting", self._on_room_reconnecting)
        self._room.on("reconnected", self._on_room_reconnected)
        self._room.on("disconnected", self._on_room_disconnected)

    def close(self) -> None:
        """Stop watching and cancel every grace timer; safe to call twice."""
        if self._started:
            self._started = False
            self._room.off("connection_quality_changed", self._on_quality)
            self._room.off("reconnecting", self._on_room_reconnecting)
            self._room.off("reconnected", self._on_room_reconnected)
            self._room.off("disconnected", self._on_room_disconnected)
        for timer in self._grace.values():
            timer.cancel()
        self._grace.clear()

    def holds(self, session: ParticipantSession) -> bool:
        """Whether ``session`` is waiting for its participant to come back."""
        return session.session_id in self._grace

    @property
    def waiting(self) -> int:
        """Sessions waiting for their participant (each has a grace timer running)."""
        return len(self._grace)

    def hold(self, session: ParticipantSession, reason: str) -> None:
        """Keep a dropped participant's session for the grace period."""
        self._registry.transition(session, "reconnecting", reason=f"participant dropped ({reason})")
        self._moved_by_room.discard(session.session_id)
        self._count_attempt(session)
        if self._exhausted(session):
            return
        grace = self._settings.reconnect_grace_period
        loop = asyncio.get_running_loop()
        self._grace[session.session_id] = loop.call_later(grace, self._expire, session.session_id)
        session.log.info(
            "waiting for the participant to come back", extra={"grace_period_s": grace}
        )

    def resume(self, session: ParticipantSession, participant: rtc.RemoteParticipant) -> None:
        """The held session's identity came back: same session, linked to the new connection."""
        if (timer := self._grace.pop(session.session_id, None)) is not None:
            timer.cancel()
        session.participant_sid = participant.sid
        self._registry.transition(session, "connected", reason="participant came back")
        session.reconnection_attempts = 0

    def forget(self, session_id: str) -> None:
        """The session ended: drop its grace timer."""
        self._moved_by_room.discard(session_id)
        if (timer := self._grace.pop(session_id, None)) is not None:
            timer.cancel()

    # -- room events --------------------------------------------------------------------------

    def _on_quality(self, participant: rtc.Participant, quality: rtc.ConnectionQuality) -> None:
        session = self._registry.of(participant.identity)
        if session is None or session.session_id in self._grace:
            return
        if quality in BAD_QUALITY and session.connection_state == "connected":
            name = rtc.ConnectionQuality(quality).name.removeprefix("QUALITY_").lower()
            self._registry.transition(session, "reconnecting", reason=f"connection quality {name}")
            self._count_attempt(session)
        elif (
            quality in GOOD_QUALITY
            and session.connection_state == "reconnecting"
            and not self._room_down
        ):
            self._registry.transition(session, "connected", reason="connection quality recovered")
            session.reconnection_attempts = 0

    def _on_room_reconnecting(self) -> None:
        self._room_down = True
        for session in list(self._registry.sessions.values()):
            if session.connection_state == "connected":
                self._registry.transition(
                    session, "reconnecting", reason="agent's room connection lost"
                )
                self._moved_by_room.add(session.session_id)

    def _on_room_reconnected(self) -> None:
        self._room_down = False
        moved, self._moved_by_room = self._moved_by_room, set()
        for session_id in moved:
            session = self._registry.sessions.get(session_id)
            if (
                session is not None
                and session.connection_state == "reconnecting"
                and session_id not in self._grace
            ):
                self._registry.transition(
                    session, "connected", reason="agent's room connection recovered"
                )

    def _on_room_disconnected(
        self, reason: rtc.DisconnectReason.ValueType = rtc.DisconnectReason.UNKNOWN_REASON
    ) -> None:
        self._log.warning(
            "agent disconnected from the room, ending every session",
            extra={"reason": rtc.DisconnectReason.Name(reason).lower()},
        )
        for session_id in list(self._registry.sessions):
            self._end_session(session_id, reason="agent disconnected from the room")

    # -- limits -------------------------------------------------------------------------------

    def _count_attempt(self, session: ParticipantSession) -> None:
        session.reconnection_attempts += 1
        self._metrics.reconnection_count += 1
        telemetry.count_reconnection()

    def _exhausted(self, session: ParticipantSession) -> bool:
        limit = self._settings.max_reconnection_attempts
        if session.reconnection_attempts <= limit:
            return False
        session.log.warning(
            "reconnection attempts exhausted, ending the session",
            extra={"attempts": session.reconnection_attempts, "limit": limit},
        )
        self._end_session(session.session_id, reason="reconnection attempts exhausted")
        return True

    def _expire(self, session_id: str) -> None:
        self._grace.pop(session_id, None)
        session = self._registry.sessions.get(session_id)
        if session is not None:
            session.log.info("grace period over, the participant did not come back")
        self._end_session(session_id, reason="grace period expired")
