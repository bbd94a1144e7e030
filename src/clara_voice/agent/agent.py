"""ClaraVoiceAgent: the supervisor of one room job (seed 000).

One agent per room job. It keeps a :class:`~clara_voice.agent.session.ParticipantSession`
per human participant in its :class:`~clara_voice.agent.registry.SessionRegistry`, asks its
pipeline factory for each participant's voice pipeline, and closes everything it started.
Room events arrive through synchronous handlers (livekit's EventEmitter refuses
coroutines) that hand the work to owned tasks.

The collaborators never hold the agent: reconnection (seed 001), health (002) and session
sync (003) get the registry (they follow its events) and the one or two calls they need;
the conversation (004) gets the sessions' messages. Each pipeline reports to a
:class:`_SessionEvents` of its own, which knows its session.

Ownership: ``JobContext`` → ClaraVoiceAgent (closed by the worker's ``end_of_job``, and by
the job's shutdown as a safety net) → ParticipantSessions → each one's pipeline and start
task; the agent's own collaborators and tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any

from livekit import rtc
from livekit.agents.utils import aio

from clara_voice import telemetry
from clara_voice.agent.conversation import Conversation
from clara_voice.agent.health import HealthMonitor
from clara_voice.agent.metrics import PerformanceMetrics
from clara_voice.agent.reconnection import Reconnection, is_deliberate
from clara_voice.agent.recorder import ConversationRecorder
from clara_voice.agent.registry import SessionRegistry
from clara_voice.agent.session import ParticipantSession, new_session_id
from clara_voice.config import Settings
from clara_voice.logging import get_logger
from clara_voice.persistence import Backend
from clara_voice.sync.service import SessionSync
from clara_voice.telemetry import ErrorSource
from clara_voice.voice.messages import HistoryMessage, TurnMetrics
from clara_voice.voice.seams import PipelineFactory
from clara_voice.voice.turns import resolve_session_type

CONNECT_FAILED_MESSAGE = (
    "ClaraVoiceAgent failed to connect to the LiveKit server. Voice features will be unavailable."
)

# participants that are people (a browser or app, a phone call, a messaging connector);
# agents, egress recorders, ingress streams and bridges get no session
HUMAN_KINDS = frozenset(
    {
        rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
        rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
        rtc.ParticipantKind.PARTICIPANT_KIND_CONNECTOR,
    }
)


def disconnect_reason_name(participant: rtc.Participant) -> str:
    """``client_initiated``, ``signal_close``… (``unknown_reason`` when there is none)."""
    reason = participant.disconnect_reason or rtc.DisconnectReason.UNKNOWN_REASON
    return rtc.DisconnectReason.Name(reason).lower()


class ClaraVoiceAgent:
    """Keeps one ParticipantSession per participant of a room and everything it owns."""

    def __init__(
        self,
        room: rtc.Room,
        settings: Settings,
        *,
        pipeline: PipelineFactory,
        backend: Backend | None = None,
        log_context: Mapping[str, Any] | None = None,
    ) -> None:
        self._room = room
        self._settings = settings
        self._pipeline = pipeline
        self._log = log = get_logger("clara_voice.agent", **(log_context or {}))
        self.registry = SessionRegistry()
        self.metrics = PerformanceMetrics()
        recorder = None
        if backend is not None:
            recorder = ConversationRecorder(
                backend,
                directory=settings.data_dir,
                log=log,
                flush_timeout=settings.outbox_flush_timeout,
                retry_max=settings.outbox_retry_max,
                max_attempts=settings.outbox_max_attempts,
                max_bytes=settings.outbox_max_bytes,
                on_error=lambda: self.count_error("persistence"),
            )
        self.conversation = Conversation(
            room, recorder=recorder, log=log, summary_messages=settings.summary_messages
        )
        self._reconnection = Reconnection(
            room, self.registry, self.metrics, settings, log, end_session=self.end_session_soon
        )
        self._health = HealthMonitor(
            self.registry,
            self.metrics,
            settings,
            outbox_pending=self.conversation.outbox_pending,
            count_error=self.count_error,
            log=log,
        )
        self._sync = SessionSync(
            room, self.registry, settings, log=log, count_error=self.count_error
        )
        self.registry.on("turn_completed", self._on_turn_completed)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cleanups: set[asyncio.Task[Any]] = set()
        self._started = False
        self._closed = False

    @property
    def sessions(self) -> Mapping[str, ParticipantSession]:
        return self.registry.sessions

    def session_of(self, identity: str) -> ParticipantSession | None:
        """The session of a participant identity, if it has one."""
        return self.registry.of(identity)

    @property
    def error_count(self) -> int:
        return self.metrics.error_count

    async def start(self) -> None:
        """Read the room's context, open persistence, then follow the room's participants;
        those already in the room get sessions now."""
        if self._started or self._closed:
            return
        self._started = True
        await self.conversation.start(history=self._settings.history_messages)
        self._room.on("participant_connected", self._on_participant_connected)
        self._room.on("participant_disconnected", self._on_participant_disconnected)
        self._reconnection.start()
        await self._sync.start()
        for participant in list(self._room.remote_participants.values()):
            self._on_participant_connected(participant)
        self._log.info("agent started", extra={"participants": len(self._room.remote_participants)})
        await self._health.start()

    async def aclose(self) -> None:
        """Close every session, then stop; safe to call twice.

        Cleanups already under way (the room disconnected, a grace period ran out) are
        waited for, not cancelled; every other session is cleaned up here. Each client gets
        its final ``ending`` event while the agent's link is up, and every session's summary
        is persisted before the recorder flushes and closes.
        """
        if self._closed:
            return
        self._closed = True
        await self._health.aclose()
        if self._started:
            self._room.off("participant_connected", self._on_participant_connected)
            self._room.off("participant_disconnected", self._on_participant_disconnected)
        self._reconnection.close()
        failures: list[BaseException] = []
        if self._cleanups:
            # a failed cleanup was already logged and counted by its done callback
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        await aio.cancel_and_wait(*self._tasks)  # joins still starting are abandoned
        for session_id in list(self.registry.sessions):
            try:
                await self.cleanup_session(session_id, reason="agent closed")
            except Exception as exc:
                failures.append(exc)
        await self._sync.aclose()  # after the sessions, so their last events go out
        for close in (self._pipeline.aclose, self.conversation.aclose):
            try:
                await close()
            except Exception as exc:
                failures.append(exc)
        self.registry.off("turn_completed", self._on_turn_completed)
        for failure in failures:
            self.count_error("session")
            self._log.error("error while closing the agent", exc_info=failure)
        self._log.info("agent closed", extra={"errors": self.error_count})

    # -- seed 000 -----------------------------------------------------------------------

    async def on_participant_joined(
        self, participant: rtc.RemoteParticipant
    ) -> ParticipantSession | None:
        """Create, store and start a session for ``participant``; ``None`` if it gets none."""
        identity = participant.identity
        if participant.kind not in HUMAN_KINDS:
            self._log.debug(
                "participant ignored", extra={"participant": identity, "kind": participant.kind}
            )
            return None
        if self._closed:
            return None
        if (previous := self.registry.of(identity)) is not None:
            if self._reconnection.holds(previous):
                # back within the grace period: the same session goes on
                self._reconnection.resume(previous, participant)
                self.conversation.joined(participant)
                return previous
            # the same identity joined again before its old session ended (e.g. a second
            # device replacing the first): one session per identity, the newest wins
            await self.cleanup_session(previous.session_id, reason="identity rejoined")

        session_id = new_session_id(identity)
        log = self._log.bind(participant=identity, session_id=session_id)
        session = ParticipantSession(
            session_id=session_id,
            participant_id=identity,
            participant_sid=participant.sid,
            log=log,
            session_type=resolve_session_type(
                participant, self._settings.default_session_type, log
            ),
            earlier_messages=list(self.conversation.earlier_messages),
        )
        self.registry.add(session)
        log.info("participant joined")
        self.conversation.joined(participant)

        session.start_task = asyncio.create_task(
            self._pipeline.start(
                room=self._room,
                participant=participant,
                session_type=session.session_type,
                history=session.earlier_messages,
                events=_SessionEvents(self, session),
                log=log,
            ),
            name=f"clara.pipeline_start.{session_id}",
        )
        try:
            session.pipeline = await session.start_task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # we are being cancelled ourselves: forget the session before unwinding
                self.registry.detach(session_id)
                raise
            return None  # cleanup_session cancelled the start: the participant left
        except Exception as exc:
            self.count_error("session")
            log.error(
                f"Failed to initialize session for participant {identity}. Error: {exc}",
                exc_info=exc,
            )
            self.registry.transition(session, "error", reason="initialization failed")
            await self.cleanup_session(session_id, reason="initialization failed")
            return None
        finally:
            session.start_task = None

        if session.connection_state == "closed":
            # cleaned up while the pipeline's start was finishing: the pipeline is ours to close
            await session.pipeline.aclose()
            return None
        self.registry.transition(session, "connected", reason="pipeline started")
        log.info("session initialized")
        return session

    async def on_participant_left(self, participant: rtc.RemoteParticipant) -> None:
        """End the session of a participant that left the room."""
        session = self.registry.of(participant.identity)
        if session is None:
            return
        if session.participant_sid and session.participant_sid != participant.sid:
            return  # a stale leave of an earlier connection of this identity
        reason = disconnect_reason_name(participant)
        session.log.info("participant left", extra={"reason": reason})
        self.conversation.left(participant.identity)
        if not is_deliberate(participant) and session.connection_state in (
            "connected",
            "reconnecting",
        ):
            self._reconnection.hold(session, reason)
            return
        await self.cleanup_session(session.session_id, reason=f"participant left ({reason})")

    async def cleanup_session(self, session_id: str, *, reason: str = "cleanup") -> bool:
        """Remove a session and close what it owns; ``False`` if there was no such session."""
        session = self.registry.detach(session_id)
        if session is None:
            return False
        self._reconnection.forget(session_id)
        session.log.info("cleaning up session", extra={"reason": reason})
        # ending from now on: the client hears so before the pipeline takes its time to close
        self.registry.transition(session, "closed", reason=reason)
        if session.start_task is not None and not session.start_task.done():
            await aio.cancel_and_wait(session.start_task)
        try:
            if session.pipeline is not None:
                await session.pipeline.aclose()
        except Exception as exc:
            self.count_error("session")
            session.log.error("failed to close the session's pipeline", exc_info=exc)
        self.conversation.summary(session)
        session.log.info(
            "session closed",
            extra={
                "duration_s": round(session.age_seconds, 3),
                "message_count": session.message_count,
            },
        )
        self.registry.closed(session, reason)
        return True

    def end_session_soon(self, session_id: str, *, reason: str) -> None:
        """Clean a session up from synchronous code (timers, room handlers); ``aclose``
        waits for it to finish."""
        if session_id in self.registry.sessions and not self._closed:
            task = self._spawn(
                self.cleanup_session(session_id, reason=reason), f"cleanup.{session_id}"
            )
            self._tasks.discard(task)
            self._cleanups.add(task)

    def pipeline_closed(self, session: ParticipantSession, reason: str, *, error: bool) -> None:
        """livekit closed the session's pipeline on its own: after an unrecoverable error
        the session fails; when the job is shutting down (livekit closes the job's first
        AgentSession before anything else) it simply ends."""
        if self.registry.sessions.get(session.session_id) is not session or self._closed:
            return
        if error:
            session.log.warning("pipeline closed by livekit", extra={"reason": reason})
            if session.connection_state != "closed":
                self.registry.transition(session, "error", reason=f"pipeline closed: {reason}")
        else:
            session.log.info("pipeline closed by the job", extra={"reason": reason})
        self.end_session_soon(session.session_id, reason=f"pipeline closed ({reason})")

    def count_error(self, source: ErrorSource) -> None:
        """Count one error: PerformanceMetrics.error_count and clara_errors_total{source}."""
        self.metrics.error_count += 1
        telemetry.count_error(source)

    def _on_turn_completed(self, session: ParticipantSession, turn: TurnMetrics) -> None:
        self.metrics.record_turn(turn)
        telemetry.record_turn(turn)
        session.log.info(
            "turn completed",
            extra={
                "message_count": session.message_count,
                "e2e_latency": turn.e2e_latency,
                "end_of_turn_delay": turn.end_of_turn_delay,
                "transcription_delay": turn.transcription_delay,
                "llm_ttft": turn.llm_ttft,
                "tts_ttfb": turn.tts_ttfb,
            },
        )

    # -- room event handlers (synchronous: they hand the work to owned tasks) -------------

    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        self._spawn(self.on_participant_joined(participant), f"join.{participant.identity}")

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        self._spawn(self.on_participant_left(participant), f"leave.{participant.identity}")

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"clara.{name}")
        self._tasks.add(task)
        task.add_done_callback(self._on_task_done)
        return task

    def _on_task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._cleanups.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.count_error("session")
            self._log.error("room event handler failed", exc_info=exc)


class _SessionEvents:
    """What one session's pipeline reports, applied to that session."""

    def __init__(self, agent: ClaraVoiceAgent, session: ParticipantSession) -> None:
        self._agent = agent
        self._session = session

    def message_added(self, message: HistoryMessage) -> None:
        self._agent.conversation.message(self._session, message)

    def turn_completed(self, turn: TurnMetrics) -> None:
        self._agent.registry.turn_completed(self._session, turn)

    def provider_failed(self, source: str, error: object) -> None:
        self._agent.count_error("provider")
        self._session.log.error(
            "provider failed the turn", extra={"source": source, "error": str(error)[:300]}
        )

    def pipeline_closed(self, reason: str, *, error: bool) -> None:
        self._agent.pipeline_closed(self._session, reason, error=error)


__all__ = ["CONNECT_FAILED_MESSAGE", "HUMAN_KINDS", "ClaraVoiceAgent"]
