"""ClaraVoiceAgent: the supervisor of one room job (seed 000).

One agent per room job. It keeps a :class:`~clara_voice.agent.session.ParticipantSession`
per human participant in its :class:`~clara_voice.agent.registry.SessionRegistry`, asks its
pipeline factory for each participant's voice pipeline, and closes everything it started.
Room events arrive through synchronous handlers (livekit's EventEmitter refuses
coroutines) that hand the work to owned tasks.

The collaborators never hold the agent: reconnection (seed 001), health (002) and session
sync (003) get the registry (they follow its events) and the one or two calls they need;
the conversation (004) gets the sessions' messages.
:class:`~clara_voice.agent.pipelines.SessionPipelines` starts each session's pipeline
(with its participant's own history),
:class:`~clara_voice.agent.places.SessionPlaces` keeps a room within
``CLARA_MAX_SESSIONS_PER_ROOM``, :class:`~clara_voice.agent.revival.PipelineRevival`
rebuilds a pipeline livekit closed under a participant still in the room, and the
:class:`~clara_voice.voice.surface.RoomSurface` is the one owner of what the sessions
share of the room.

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
from clara_voice._closing import CANCEL_GRACE
from clara_voice.agent.closing import ClosePlan
from clara_voice.agent.conversation import Conversation
from clara_voice.agent.health import HealthMonitor
from clara_voice.agent.metrics import PerformanceMetrics
from clara_voice.agent.pipelines import HUMAN_KINDS, SessionPipelines, disconnect_reason_name
from clara_voice.agent.places import SessionPlaces
from clara_voice.agent.reconnection import Reconnection, is_deliberate
from clara_voice.agent.recorder import ConversationRecorder
from clara_voice.agent.registry import SessionRegistry
from clara_voice.agent.revival import PipelineRevival
from clara_voice.agent.session import ParticipantSession, new_session_id
from clara_voice.config import Settings
from clara_voice.logging import get_logger
from clara_voice.persistence import Backend
from clara_voice.sync.service import SessionSync
from clara_voice.telemetry import ErrorSource
from clara_voice.voice.seams import PipelineFactory
from clara_voice.voice.surface import RoomSurface
from clara_voice.voice.turns import resolve_session_type

CONNECT_FAILED_MESSAGE = (
    "ClaraVoiceAgent failed to connect to the LiveKit server. Voice features will be unavailable."
)


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
        self._log = log = get_logger("clara_voice.agent", **(log_context or {}))
        self.registry = SessionRegistry()
        self.metrics = PerformanceMetrics()
        self.surface = RoomSurface(room, log=log, on_error=lambda: self.count_error("session"))
        self._places = SessionPlaces(
            limit=settings.max_sessions_per_room, notices=self.surface.notices
        )
        recorder = None
        if backend is not None:
            recorder = ConversationRecorder.from_settings(
                backend, settings, log=log, on_error=lambda: self.count_error("persistence")
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
            figures=lambda: {"open_streams": self.surface.streams.open_readers()},
            count_error=self.count_error,
            log=log,
        )
        self._sync = SessionSync(
            room,
            self.registry,
            settings,
            surface=self.surface,
            log=log,
            count_error=self.count_error,
        )
        self._pipelines = SessionPipelines(
            pipeline,
            room=room,
            surface=self.surface,
            conversation=self.conversation,
            registry=self.registry,
            count_error=self.count_error,
            closed=self.pipeline_closed,
        )
        self._revival = PipelineRevival(
            self.registry,
            present=self._pipelines.present,
            rebuild=self._pipelines.rebuild,
            end_session=self.end_session_soon,
        )
        self.registry.on("turn_completed", self.metrics.turn_completed)
        self.registry.on("session_closed", self._on_session_closed)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cleanups: set[asyncio.Task[Any]] = set()
        self._started = False
        self._closed = False

    @property
    def sessions(self) -> Mapping[str, ParticipantSession]:
        return self.registry.sessions

    @property
    def error_count(self) -> int:
        return self.metrics.error_count

    @property
    def settings(self) -> Settings:
        return self._settings

    async def start(self) -> None:
        """Read the room's context, open persistence, then follow the room's participants;
        those already in the room get sessions now."""
        if self._started or self._closed:
            return
        self._started = True
        self.surface.start()
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

        Every step is bounded by the close's deadline (agent/closing.py), so the job ends
        within ``CLARA_JOB_SHUTDOWN_TIMEOUT`` whatever it waits for. Sessions close together;
        cleanups already under way (a participant left, a grace period ran out) are waited
        for, not cancelled, while the deadline allows. Each client gets its final ``ending``
        event while the agent's link is up, and every session's summary is written, even
        one whose cleanup ran out of time, before the recorder flushes and closes.
        """
        if self._closed:
            return
        self._closed = True
        plan = ClosePlan(self._settings, self._log)
        await plan.step(self._health.aclose(), "health checks", limit=CANCEL_GRACE)
        if self._started:
            self._room.off("participant_connected", self._on_participant_connected)
            self._room.off("participant_disconnected", self._on_participant_disconnected)
        self._reconnection.close()
        await plan.step(self._revival.aclose(), "pipeline rebuilds", limit=CANCEL_GRACE)
        await plan.stop(self._tasks, "joins")  # joins still starting are abandoned
        await self._close_sessions(plan)
        failures: list[BaseException] = []
        # sync after the sessions, so their last events go out; the surface after both
        for what, close in (
            ("session sync", self._sync.aclose),
            ("pipelines", self._pipelines.aclose),
            ("room surface", self.surface.aclose),
            ("conversation", self.conversation.aclose),
        ):
            try:
                await plan.step(close(), what)
            except Exception as exc:
                failures.append(exc)
        self.registry.off("turn_completed", self.metrics.turn_completed)
        self.registry.off("session_closed", self._on_session_closed)
        for failure in failures:
            self.count_error("session")
            self._log.error("error while closing the agent", exc_info=failure)
        self._log.info("agent closed", extra={"errors": self.error_count})

    async def _close_sessions(self, plan: ClosePlan) -> None:
        cleanups = self._cleanups | {
            asyncio.create_task(self.cleanup_session(sid, reason="agent closed"), name=sid)
            for sid in list(self.registry.sessions)
        }
        for task in await plan.sessions(cleanups) - self._cleanups:  # _on_task_done logs those
            if not task.cancelled() and (exc := task.exception()) is not None:
                self.count_error("session")
                self._log.error("error while closing a session", exc_info=exc)

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
        if not self._places.admit(identity, participant.sid, taken=len(self.registry.sessions)):
            return None  # told so; it gets a session when a place frees up

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
        )
        self.registry.add(session)
        log.info("participant joined")
        self.conversation.joined(participant)
        try:
            session.pipeline = await self._pipelines.start(session, participant)
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

        if session.connection_state == "closed":
            # cleaned up while the pipeline's start was finishing: the pipeline is ours to close
            await session.pipeline.aclose()
            return None
        self.registry.transition(session, "connected", reason="pipeline started")
        log.info("session initialized")
        return session

    async def on_participant_left(self, participant: rtc.RemoteParticipant) -> None:
        """End (or hold) the session of a participant that left; returns once it ended."""
        if (task := self._participant_left(participant)) is not None:
            await asyncio.shield(task)

    def _participant_left(self, participant: rtc.RemoteParticipant) -> asyncio.Task[Any] | None:
        # synchronous up to the cleanup task, which aclose waits for: a leave just before
        # the job shuts down still gets its summary written
        session = self.registry.of(participant.identity)
        if session is None:
            self._places.left(participant.identity, participant.sid)
            return None
        if session.participant_sid and session.participant_sid != participant.sid:
            return None  # a stale leave of an earlier connection of this identity
        reason = disconnect_reason_name(participant)
        session.log.info("participant left", extra={"reason": reason})
        self.conversation.left(participant.identity)
        held = session.connection_state in ("connected", "reconnecting")
        if held and not is_deliberate(participant):
            self._reconnection.hold(session, reason)
            return None
        return self.end_session_soon(session.session_id, reason=f"participant left ({reason})")

    async def cleanup_session(self, session_id: str, *, reason: str = "cleanup") -> bool:
        """Remove a session and close what it owns; ``False`` if there was no such session.
        Its summary is written even when the cleanup is cancelled halfway."""
        session = self.registry.detach(session_id)
        if session is None:
            return False
        self._reconnection.forget(session_id)
        self._revival.forget(session_id)
        try:
            session.log.info("cleaning up session", extra={"reason": reason})
            # ending from now on: the client hears so before the pipeline takes its time
            self.registry.transition(session, "closed", reason=reason)
            if session.start_task is not None and not session.start_task.done():
                await aio.cancel_and_wait(session.start_task)
            if session.pipeline is not None:
                await session.pipeline.aclose()
        except Exception as exc:
            self.count_error("session")
            session.log.error("failed to close the session's pipeline", exc_info=exc)
        finally:
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

    def end_session_soon(self, session_id: str, *, reason: str) -> asyncio.Task[Any] | None:
        """Clean a session up from synchronous code (timers, room handlers); ``aclose``
        waits for it to finish. The cleanup task, or ``None`` when there is none to do."""
        if session_id not in self.registry.sessions or self._closed:
            return None
        task = self._spawn(self.cleanup_session(session_id, reason=reason), f"cleanup.{session_id}")
        self._tasks.discard(task)
        self._cleanups.add(task)
        return task

    def pipeline_closed(self, session: ParticipantSession, reason: str, error: bool) -> None:
        """livekit closed the session's pipeline on its own: after an unrecoverable error
        a new one is built for the participant still in the room (agent/revival.py), or
        the session fails; when the job is shutting down (livekit closes the job's first
        AgentSession before anything else) it simply ends."""
        if self.registry.sessions.get(session.session_id) is not session or self._closed:
            return
        if error:
            session.log.warning("pipeline closed by livekit", extra={"reason": reason})
            if self._revival.pipeline_failed(session, reason):
                return
            if session.connection_state != "closed":
                self.registry.transition(session, "error", reason=f"pipeline closed: {reason}")
        else:
            session.log.info("pipeline closed by the job", extra={"reason": reason})
        self.end_session_soon(session.session_id, reason=f"pipeline closed ({reason})")

    def count_error(self, source: ErrorSource) -> None:
        """Count one error: PerformanceMetrics.error_count and clara_errors_total{source}."""
        self.metrics.error_count += 1
        telemetry.count_error(source)

    # -- room event handlers (synchronous: they hand the work to owned tasks) -------------

    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        self._spawn(self.on_participant_joined(participant), f"join.{participant.identity}")

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        self._participant_left(participant)

    def _on_session_closed(self, session: ParticipantSession, reason: str) -> None:
        # a place is free: the first participant waiting for one (still there) gets it
        while not self._closed and (waiting := self._places.next_waiting()) is not None:
            identity, sid = waiting
            participant = self._room.remote_participants.get(identity)
            if participant is not None and participant.sid == sid:
                self._on_participant_connected(participant)
                return

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


__all__ = ["CONNECT_FAILED_MESSAGE", "HUMAN_KINDS", "ClaraVoiceAgent"]
