"""SessionRegistry: the room job's sessions, and the one place their state changes.

The agent creates and ends sessions; everything else about a session's life goes through
here and is announced as an event (livekit's ``EventEmitter`` style: synchronous handlers,
snake_case past-tense names), so that the collaborators follow the sessions without
holding the agent:

=========================  ===============================  =============================
event                      arguments                        who listens
=========================  ===============================  =============================
``session_created``        session                          sync, health
``connection_state_changed``  session, old, new, reason     sync, health
``session_type_changed``   session, old, new, source        (logs)
``turn_completed``         session, turn                    the agent's metrics
``session_closed``         session, reason                  health
=========================  ===============================  =============================

A connection state moves only through :meth:`SessionRegistry.transition`: checked against
the table in :mod:`clara_voice.agent.session`, logged with its reason, counted, announced.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Literal

from livekit import rtc

from clara_voice.agent.session import ParticipantSession, check_transition
from clara_voice.states import ConnectionState, SessionType
from clara_voice.voice.messages import TurnMetrics

RegistryEvent = Literal[
    "session_created",
    "connection_state_changed",
    "session_type_changed",
    "turn_completed",
    "session_closed",
]


class SessionRegistry(rtc.EventEmitter[RegistryEvent]):
    """The sessions of one room job, by session id and by participant identity."""

    def __init__(self) -> None:
        super().__init__()
        self._sessions: dict[str, ParticipantSession] = {}
        self._by_identity: dict[str, str] = {}
        self.state_transitions: Counter[str] = Counter()
        """Connection state moves made, by ``"old->new"``."""

    @property
    def sessions(self) -> Mapping[str, ParticipantSession]:
        return self._sessions

    def of(self, identity: str) -> ParticipantSession | None:
        """The session of a participant identity, if it has one."""
        session_id = self._by_identity.get(identity)
        return None if session_id is None else self._sessions.get(session_id)

    def add(self, session: ParticipantSession) -> None:
        """Keep ``session`` as its participant's session (announced as created)."""
        self._sessions[session.session_id] = session
        self._by_identity[session.participant_id] = session.session_id
        self.emit("session_created", session)

    def detach(self, session_id: str) -> ParticipantSession | None:
        """Stop keeping a session (its cleanup goes on); ``None`` if it was not kept."""
        session = self._sessions.pop(session_id, None)
        if session is not None and self._by_identity.get(session.participant_id) == session_id:
            del self._by_identity[session.participant_id]
        return session

    def transition(self, session: ParticipantSession, new: ConnectionState, *, reason: str) -> None:
        """The one place a session's connection_state changes: checked, logged, counted."""
        old = session.connection_state
        if old == new:
            return
        check_transition(old, new)
        session.connection_state = new
        self.state_transitions[f"{old}->{new}"] += 1
        session.log.info(
            "connection state changed", extra={"from": old, "to": new, "reason": reason}
        )
        self.emit("connection_state_changed", session, old, new, reason)

    def switch_type(self, session: ParticipantSession, new: SessionType, *, source: str) -> None:
        """Switch a connected session's type in its pipeline, keeping the conversation.

        Raises what the pipeline raises when it cannot switch (the type is then unchanged),
        and :class:`RuntimeError` when the session has no running pipeline.
        """
        old = session.session_type
        if session.pipeline is None or session.connection_state != "connected":
            raise RuntimeError("the session is not active")
        if new == old:
            return
        session.pipeline.set_session_type(new)
        session.session_type = new
        session.log.info("session type changed", extra={"from": old, "to": new, "via": source})
        self.emit("session_type_changed", session, old, new, source)

    def turn_completed(self, session: ParticipantSession, turn: TurnMetrics) -> None:
        """The pipeline reported a completed turn."""
        session.turns.append(turn)
        self.emit("turn_completed", session, turn)

    def closed(self, session: ParticipantSession, reason: str) -> None:
        """``session``'s cleanup is over (announced as closed)."""
        self.emit("session_closed", session, reason)


__all__ = ["RegistryEvent", "SessionRegistry"]
