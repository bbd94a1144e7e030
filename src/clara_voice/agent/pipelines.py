"""SessionPipelines: starting (and restarting) each session's voice pipeline.

The agent decides who gets a session; this collaborator gives a session its pipeline:
it loads the participant's own history (agent/conversation.py: never another
participant's words), asks the room's :class:`~clara_voice.voice.seams.PipelineFactory`
for the pipeline in the session's type, and hands it a :class:`SessionEvents` of its own
through which the pipeline reports that session's conversation. A start runs as the
session's ``start_task``, which a cleanup cancels. After livekit closed a pipeline for good
(agent/revival.py) it builds a new one for the same session, continuing its conversation,
and apologizes to the participant.

Which participant kinds are people is decided here too (:data:`HUMAN_KINDS`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from livekit import rtc

from clara_voice.agent.conversation import Conversation
from clara_voice.agent.registry import SessionRegistry
from clara_voice.agent.session import ParticipantSession
from clara_voice.telemetry import ErrorSource
from clara_voice.voice.messages import HistoryMessage, TurnMetrics
from clara_voice.voice.seams import PipelineFactory, VoicePipeline
from clara_voice.voice.surface import RoomSurface

# participants that are people (a browser or app, a phone call, a messaging connector);
# agents, egress recorders, ingress streams and bridges get no session
HUMAN_KINDS = frozenset(
    {
        rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
        rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
        rtc.ParticipantKind.PARTICIPANT_KIND_CONNECTOR,
    }
)

PipelineClosed = Callable[[ParticipantSession, str, bool], None]
"""What the agent does when livekit closes a session's pipeline: (session, reason, error)."""


def disconnect_reason_name(participant: rtc.Participant) -> str:
    """``client_initiated``, ``signal_close``… (``unknown_reason`` when there is none)."""
    reason = participant.disconnect_reason or rtc.DisconnectReason.UNKNOWN_REASON
    return rtc.DisconnectReason.Name(reason).lower()


class SessionPipelines:
    """Starts the pipelines of one room job's sessions; see the module docstring."""

    def __init__(
        self,
        factory: PipelineFactory,
        *,
        room: rtc.Room,
        surface: RoomSurface,
        conversation: Conversation,
        registry: SessionRegistry,
        count_error: Callable[[ErrorSource], None],
        closed: PipelineClosed,
    ) -> None:
        self._factory = factory
        self._room = room
        self._surface = surface
        self._conversation = conversation
        self._registry = registry
        self._count_error = count_error
        self._closed = closed

    async def start(
        self, session: ParticipantSession, participant: rtc.RemoteParticipant
    ) -> VoicePipeline:
        """Start ``session``'s pipeline (its start task, which a cleanup cancels) with the
        participant's own history: its earlier messages, then this session's."""

        async def start() -> VoicePipeline:
            if not session.earlier_loaded:  # once: a rebuild adds this session's own
                session.earlier_messages = await self._conversation.history_of(
                    session.participant_id
                )
                session.earlier_loaded = True
            return await self._factory.start(
                surface=self._surface,
                participant=participant,
                session_type=session.session_type,
                history=[*session.earlier_messages, *session.history],
                events=SessionEvents(self, session),
                log=session.log,
            )

        session.start_task = asyncio.create_task(
            start(), name=f"clara.pipeline_start.{session.session_id}"
        )
        try:
            return await session.start_task
        finally:
            session.start_task = None

    def present(self, session: ParticipantSession) -> bool:
        """Whether ``session``'s participant (that very connection) is in the room."""
        participant = self._room.remote_participants.get(session.participant_id)
        return participant is not None and participant.sid == session.participant_sid

    async def rebuild(self, session: ParticipantSession) -> bool:
        """A new pipeline for ``session`` after its last one failed; ``False`` when it
        could not start."""
        participant = self._room.remote_participants.get(session.participant_id)
        if participant is None:
            return False
        try:
            pipeline = await self.start(session, participant)
        except Exception as exc:
            self._count_error("session")
            session.log.error("could not start a new pipeline", exc_info=exc)
            return False
        if self._registry.sessions.get(session.session_id) is not session:
            await pipeline.aclose()  # ended meanwhile
            return True
        session.pipeline = pipeline
        self._registry.transition(session, "connected", reason="pipeline restarted")
        pipeline.apologize()
        session.log.info("pipeline restarted")
        return True

    async def aclose(self) -> None:
        """Release what the room's pipelines shared (the factory's routers, providers)."""
        await self._factory.aclose()


class SessionEvents:
    """What one session's pipeline reports, applied to that session."""

    def __init__(self, pipelines: SessionPipelines, session: ParticipantSession) -> None:
        self._pipelines = pipelines
        self._session = session

    def message_added(self, message: HistoryMessage) -> None:
        self._pipelines._conversation.message(self._session, message)

    def turn_completed(self, turn: TurnMetrics) -> None:
        self._pipelines._registry.turn_completed(self._session, turn)

    def provider_failed(self, source: str, error: object) -> None:
        self._pipelines._count_error("provider")
        self._session.log.error(
            "provider failed the turn", extra={"source": source, "error": str(error)[:300]}
        )

    def pipeline_closed(self, reason: str, *, error: bool) -> None:
        self._pipelines._closed(self._session, reason, error)


__all__ = ["HUMAN_KINDS", "SessionEvents", "SessionPipelines", "disconnect_reason_name"]
