"""The voice pipeline: one livekit AgentSession per participant (VAD → STT → LLM → TTS).

:class:`LiveKitPipelineFactory` is the agent's :class:`~clara_voice.voice.seams.PipelineFactory`:
each participant gets its own livekit ``AgentSession`` (its own conversation), fed by the
room through a :class:`~clara_voice.voice.media.MediaBinding` (``RoomMedia`` in production:
private to that participant; tests bind livekit's audio and text I/O seams directly).
:class:`LiveKitPipeline` is one participant's running AgentSession: it reports messages,
turns, provider failures and its end to the :class:`~clara_voice.voice.seams.PipelineEvents`
it was given, switches the session type, and closes its media.

Decisions:

- ``close_on_disconnect=False``: livekit would end the AgentSession whenever its
  participant disconnects; here the agent decides (a client-initiated leave ends the
  session at once, a network drop may be ridden out), then closes the pipeline.
- Chat text and push-to-talk RPCs are routed per room by the sender's identity
  (:mod:`clara_voice.voice.routing`), not by livekit's per-session room input, which serves
  one participant only.
- When a provider fails a turn for good (after livekit's retries and fallbacks), the
  participant hears, or in a text session reads, ``CLARA_APOLOGY`` instead of silence.
- Every AgentSession has the whole pipeline and media that can carry audio, whatever its
  session type; the type only turns audio and turn detection on or off
  (``turns.apply_session_type``), so ``set_session_type`` can switch it while the
  participant is connected and the conversation goes on in the same AgentSession.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession, llm, vad
from livekit.agents.voice.events import (
    CloseEvent,
    CloseReason,
    ConversationItemAddedEvent,
    ErrorEvent,
)

from clara_voice._closing import finish_within
from clara_voice.config import Settings
from clara_voice.logging import ContextLogger, get_logger
from clara_voice.states import SessionType
from clara_voice.voice._livekit_job import forget_job_shutdown_callbacks
from clara_voice.voice.assistant import ClaraAssistant
from clara_voice.voice.listening import AudioTurnModel, ListeningTurnDetector, bundled_audio_model
from clara_voice.voice.media import MediaBinding, MediaLink, RoomMedia, spoken_apology
from clara_voice.voice.messages import HistoryMessage, history_message, turn_metrics
from clara_voice.voice.providers import Providers, build_providers, connect_options
from clara_voice.voice.routing import ChatRouter, PushToTalk
from clara_voice.voice.seams import PipelineEvents
from clara_voice.voice.surface import RoomSurface
from clara_voice.voice.turns import (
    SESSION_TYPE_CONFIGS,
    EffectiveConfig,
    TurnDetectionKind,
    apply_session_type,
    turn_handling,
)

CLOSE_TIMEOUT = 5.0
"""Bound on closing one AgentSession, so a stuck provider cannot hold a cleanup."""


class LiveKitPipelineFactory:
    """Builds each participant's AgentSession from Settings; one factory per room."""

    def __init__(
        self,
        settings: Settings,
        *,
        vad: vad.VAD,
        providers: Providers | None = None,
        media: MediaBinding | None = None,
        turn_detector: Callable[[], Any] | None = None,
        audio_turn_model: Callable[[], AudioTurnModel] | None = bundled_audio_model,
        log: ContextLogger | None = None,
    ) -> None:
        self._settings = settings
        self._vad = vad
        self._providers = providers or build_providers(settings, vad=vad)
        self._media = media or RoomMedia()
        self._turn_detector = turn_detector or _bundled_turn_detector
        self._audio_turn_model = audio_turn_model
        self._log = log or get_logger("clara_voice.voice")
        self._push_to_talk: PushToTalk | None = None
        self._chat: ChatRouter | None = None
        self._closed = False

    @property
    def providers(self) -> Providers:
        return self._providers

    async def start(
        self,
        *,
        surface: RoomSurface,
        participant: rtc.RemoteParticipant,
        session_type: SessionType,
        history: Sequence[HistoryMessage],
        events: PipelineEvents,
        log: ContextLogger,
    ) -> LiveKitPipeline:
        settings = self._settings
        routes = self._routers(surface)
        hear = None
        if settings.turn_detection == "combined":
            listening = ListeningTurnDetector(
                audio_model=self._audio_turn_model, language=settings.stt_language
            )
            eot, hear = (lambda: listening), listening.hear
        else:
            eot = _once(self._turn_detector)
        agent_session: AgentSession[Any] = AgentSession(
            stt=self._providers.stt,
            vad=self._vad,
            llm=self._providers.llm,
            tts=self._providers.tts,
            turn_handling=turn_handling(settings, session_type, eot),
            conn_options=connect_options(settings),
            session_close_transcript_timeout=0.5,
            user_away_timeout=None,
        )
        pipeline = LiveKitPipeline(
            agent_session=agent_session,
            identity=participant.identity,
            session_type=session_type,
            events=events,
            settings=settings,
            eot=eot,
            log=log,
        )
        # before the media is attached, so nothing is heard or said that the type forbids
        apply_session_type(agent_session, session_type, settings, eot)
        try:
            pipeline.media = await self._media.start(
                agent_session,
                ClaraAssistant(
                    instructions=settings.instructions,
                    chat_ctx=_chat_context(history),
                    hear=hear,
                ),
                surface=surface,
                participant=participant,
                session_type=session_type,
                log=log,
            )
            pipeline.attach(routes)
        except BaseException:
            await pipeline.aclose()
            raise
        log.info("pipeline started", extra={"session_type": session_type})
        return pipeline

    def _routers(self, surface: RoomSurface) -> tuple[ChatRouter, PushToTalk]:
        if self._chat is None:
            self._chat = ChatRouter(surface.streams, surface.notices, self._log)
        if self._push_to_talk is None:
            self._push_to_talk = PushToTalk(
                surface.room.local_participant, surface.notices.refusals
            )
            self._push_to_talk.register()
        return self._chat, self._push_to_talk

    async def aclose(self) -> None:
        """Release what the room's pipelines shared; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._push_to_talk is not None:
            self._push_to_talk.close()
        try:
            if self._chat is not None:
                await self._chat.aclose()
        finally:
            await self._providers.aclose()


class LiveKitPipeline:
    """One participant's running AgentSession and the bookkeeping around it."""

    def __init__(
        self,
        *,
        agent_session: AgentSession[Any],
        identity: str,
        session_type: SessionType,
        events: PipelineEvents,
        settings: Settings,
        eot: Callable[[], Any],
        log: ContextLogger,
    ) -> None:
        self.agent_session = agent_session
        self._session_type = session_type
        self._events = events
        self._log = log
        self._settings = settings
        self._eot = eot
        self._apology = settings.apology
        self._pending_user: llm.ChatMessage | None = None
        self._routes: tuple[ChatRouter, PushToTalk] | None = None
        self._identity = identity
        self._closed = False
        self.media: MediaLink | None = None
        agent_session.on("conversation_item_added", self._on_item)
        agent_session.on("error", self._on_error)
        agent_session.on("close", self._on_close)

    @property
    def session_type(self) -> SessionType:
        return self._session_type

    def attach(self, routes: tuple[ChatRouter, PushToTalk]) -> None:
        """Route the participant's chat and push-to-talk calls to this pipeline."""
        chat, push_to_talk = routes
        self._routes = routes
        chat.add(self._identity, self.handle_text)
        if SESSION_TYPE_CONFIGS[self._session_type].push_to_talk:
            push_to_talk.add(self._identity, self.agent_session)

    def set_session_type(self, session_type: SessionType) -> None:
        """Switch to ``session_type`` in the same AgentSession (the conversation goes on).

        Leaving voice drops the user's unfinished turn and stops the reply being spoken;
        entering or leaving push-to-talk registers or unregisters the caller's RPC routing.
        """
        old = self._session_type
        if session_type == old or self._closed:
            return
        session = self.agent_session
        was, now = SESSION_TYPE_CONFIGS[old], SESSION_TYPE_CONFIGS[session_type]
        if was.push_to_talk and self._routes is not None:
            self._routes[1].remove(self._identity, session)
        apply_session_type(session, session_type, self._settings, self._eot)
        # RuntimeError: livekit closed the session, or a reply cannot be interrupted
        if was.voice_activity and not now.audio_input:
            # half-heard speech must not become a turn later (push-to-talk's start_turn
            # clears it too, but a text message would not)
            with contextlib.suppress(RuntimeError):
                session.clear_user_turn()
        if was.audio_output and not now.audio_output:
            with contextlib.suppress(RuntimeError):
                session.interrupt()
        if now.push_to_talk and self._routes is not None:
            self._routes[1].add(self._identity, session)
        self._session_type = session_type
        self._log.info(
            "session type switched", extra={"old_type": old, "session_type": session_type}
        )

    def effective(self) -> EffectiveConfig:
        """The AgentSession's live state, in seed 003's terms."""
        session = self.agent_session
        push_to_talk = self._routes is not None and self._routes[1].serves(self._identity, session)
        detection: TurnDetectionKind
        if session.turn_detection != "manual":
            detection = "server"
        else:
            detection = "client" if push_to_talk else "none"
        audio_in, audio_out = session.input.audio_enabled, session.output.audio_enabled
        return {
            "session_type": self._session_type,
            "turn_detection": detection,
            "voice_activity_enabled": audio_out and (audio_in or push_to_talk),
            "audio_input_enabled": audio_in,
            "audio_output_enabled": audio_out,
        }

    async def handle_text(self, text: str) -> None:
        """A chat message from the participant: a turn of its own."""
        if self._closed:
            return
        # a new message supersedes a reply in progress; one that cannot be interrupted
        # plays out and this one queues behind it
        with contextlib.suppress(RuntimeError):
            self.agent_session.interrupt()
        self.agent_session.generate_reply(user_input=text)

    async def aclose(self) -> None:
        """Close the AgentSession (within CLOSE_TIMEOUT, a hard bound: a close that does not
        end when cancelled is left behind) and then its media, whatever the first did; safe
        to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._routes is not None:
            chat, push_to_talk = self._routes
            chat.remove(self._identity, self.handle_text)
            push_to_talk.remove(self._identity, self.agent_session)
        failures: list[Exception] = []
        try:
            closing = self.agent_session.aclose()
            await finish_within(closing, CLOSE_TIMEOUT, what="closing AgentSession", log=self._log)
        except Exception as exc:
            failures.append(exc)
        finally:
            self.agent_session.off("conversation_item_added", self._on_item)
            self.agent_session.off("error", self._on_error)
            self.agent_session.off("close", self._on_close)
            forget_job_shutdown_callbacks(self.agent_session)
        if self.media is not None:
            try:
                await self.media.aclose()
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise ExceptionGroup("could not close the pipeline cleanly", failures)

    # -- livekit events ---------------------------------------------------------------------

    def _on_item(self, event: ConversationItemAddedEvent) -> None:
        item = event.item
        if not isinstance(item, llm.ChatMessage) or item.role not in ("user", "assistant"):
            return
        if item.role == "user" and not (item.text_content or "").strip():
            return  # nothing said (livekit adds one when a job closes a text session)
        self._events.message_added(history_message(item))
        if item.role == "user":
            self._pending_user = item
            return
        user, self._pending_user = self._pending_user, None
        self._events.turn_completed(turn_metrics(user, item))

    def _on_error(self, event: ErrorEvent) -> None:
        error = event.error
        if getattr(error, "recoverable", True):
            return  # livekit is retrying or failing over
        source = getattr(error, "type", type(error).__name__)
        self._events.provider_failed(source, error)
        if not self._closed and source in ("llm_error", "tts_error", "stt_error"):
            self.apologize(tts_failed=source == "tts_error")

    def _on_close(self, event: CloseEvent) -> None:
        if not self._closed:
            reason = CloseReason(event.reason)
            self._events.pipeline_closed(reason.value, error=reason == CloseReason.ERROR)

    def apologize(self, *, tts_failed: bool = False) -> None:
        """Say ``CLARA_APOLOGY`` (in the bundled clip when the TTS itself failed), or write
        it in a session without audio output."""
        if self._closed:
            return
        session = self.agent_session
        output = session.output
        try:
            if output.audio is not None and output.audio_enabled:
                speech = None if tts_failed else session.tts
                options = session.conn_options.tts_conn_options
                audio = spoken_apology(speech, self._apology, options, self._log)
                session.say(self._apology, audio=audio, add_to_chat_ctx=False)
            else:
                session.say(self._apology, add_to_chat_ctx=False)
        except RuntimeError as exc:  # the session is closing
            self._log.warning("could not apologize", exc_info=exc)


def _chat_context(history: Sequence[HistoryMessage]) -> llm.ChatContext | None:
    """The earlier messages of the conversation, for the LLM to continue from."""
    if not history:
        return None
    ctx = llm.ChatContext()
    for message in history:
        ctx.add_message(role=message.role, content=message.text)
    return ctx


def _once(make: Callable[[], Any]) -> Callable[[], Any]:
    """``make``, called at most once (a session switching back to voice-vad reuses its
    end-of-turn model)."""
    made: list[Any] = []

    def get() -> Any:
        if not made:
            made.append(make())
        return made[0]

    return get


def _bundled_turn_detector() -> Any:
    from livekit.agents import inference

    return inference.TurnDetector(version="v1-mini")


__all__ = ["CLOSE_TIMEOUT", "LiveKitPipeline", "LiveKitPipelineFactory"]
