"""Turns: session types (seed 003), their turn handling, and push-to-talk over RPC.

A participant's session type comes from its ``clara.session_type`` attribute (or
``CLARA_DEFAULT_SESSION_TYPE``) when its pipeline starts, and may be switched while it is
connected (``LiveKitPipeline.set_session_type``): every AgentSession is built with the whole
pipeline (STT, VAD, LLM, TTS) and :func:`apply_session_type` turns its audio and turn
detection on or off, so a switch keeps the same conversation:

==========  ==================  ===========================================================
type        turn detection      how a turn ends
==========  ==================  ===========================================================
text        none                each text message is a turn; no audio in or out
voice-ptt   client (manual)     the client calls the RPC methods below
voice-vad   server              silence (`vad`), the STT's endpointing (`stt`), or livekit's
                                bundled end-of-turn model (`eot`): ``CLARA_TURN_DETECTION``
==========  ==================  ===========================================================

:data:`SESSION_TYPE_CONFIGS` is that table as data (seed 003's "session type mapping");
:func:`expected_effective` is what a pipeline of a type should report, for comparing with
what it does report.

Push-to-talk: RPC methods are registered once per room on the agent's participant, and a
call controls the session of its *caller* only, so nobody can start or end another
participant's turn.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypedDict, get_args

from livekit import rtc
from livekit.agents.types import TOPIC_CHAT
from livekit.agents.utils import aio
from livekit.agents.voice.turn import TurnDetectionMode, TurnHandlingOptions

from clara_voice.config import SessionType, Settings
from clara_voice.logging import ContextLogger

if TYPE_CHECKING:
    from livekit.agents import AgentSession

SESSION_TYPE_ATTRIBUTE = "clara.session_type"
SESSION_TYPES: tuple[SessionType, ...] = get_args(SessionType)

RPC_START_TURN = "clara.start_turn"
RPC_END_TURN = "clara.end_turn"
RPC_CANCEL_TURN = "clara.cancel_turn"
PTT_METHODS = (RPC_START_TURN, RPC_END_TURN, RPC_CANCEL_TURN)
MAX_CHAT_TEXT = 8_000  # characters in one chat message


def resolve_session_type(
    participant: rtc.Participant, default: SessionType, log: ContextLogger
) -> SessionType:
    """The type the participant asks for, or ``default`` (with a warning if it asked badly)."""
    requested = participant.attributes.get(SESSION_TYPE_ATTRIBUTE)
    if requested is None:
        return default
    for session_type in SESSION_TYPES:
        if requested == session_type:
            return session_type
    log.warning(
        "unknown session type requested, using the default",
        extra={"requested": requested[:64], "default": default},
    )
    return default


TurnDetectionKind = Literal["none", "client", "server"]
"""Seed 003's turn detection: none (text), client (push-to-talk), server (the agent's)."""


@dataclass(frozen=True, slots=True)
class SessionTypeConfig:
    """What a session type turns on in the pipeline."""

    turn_detection: TurnDetectionKind
    voice_activity: bool
    """Speech can be heard and answered with speech (for push-to-talk, during a turn)."""
    audio_input: bool
    """The microphone is listened to without a client's say-so."""
    audio_output: bool
    """Replies are spoken (else text only, and the TTS is never called)."""
    push_to_talk: bool
    """The client's RPC calls start and end the turns."""


SESSION_TYPE_CONFIGS: Mapping[SessionType, SessionTypeConfig] = {
    "text": SessionTypeConfig(
        turn_detection="none",
        voice_activity=False,
        audio_input=False,
        audio_output=False,
        push_to_talk=False,
    ),
    "voice-ptt": SessionTypeConfig(
        turn_detection="client",
        voice_activity=True,
        audio_input=False,  # until the client's start_turn
        audio_output=True,
        push_to_talk=True,
    ),
    "voice-vad": SessionTypeConfig(
        turn_detection="server",
        voice_activity=True,
        audio_input=True,
        audio_output=True,
        push_to_talk=False,
    ),
}


class EffectiveConfig(TypedDict):
    """What a running pipeline actually does (``LiveKitPipeline.effective``)."""

    session_type: SessionType
    turn_detection: TurnDetectionKind
    voice_activity_enabled: bool
    audio_input_enabled: bool
    """Live state: a push-to-talk session's input is on only during a turn."""
    audio_output_enabled: bool


def expected_effective(session_type: SessionType) -> EffectiveConfig:
    """What a pipeline of ``session_type`` should report (between push-to-talk turns)."""
    config = SESSION_TYPE_CONFIGS[session_type]
    return {
        "session_type": session_type,
        "turn_detection": config.turn_detection,
        "voice_activity_enabled": config.voice_activity,
        "audio_input_enabled": config.audio_input,
        "audio_output_enabled": config.audio_output,
    }


def turn_detection_mode(
    settings: Settings, session_type: SessionType, eot: Callable[[], Any]
) -> TurnDetectionMode:
    """livekit's turn detection for a session type; ``eot`` returns the end-of-turn model."""
    if SESSION_TYPE_CONFIGS[session_type].turn_detection != "server":
        return "manual"  # text turns are messages; push-to-talk turns are the client's RPCs
    if settings.turn_detection == "eot":
        detection: TurnDetectionMode = eot()
        return detection
    return settings.turn_detection


def turn_handling(
    settings: Settings, session_type: SessionType, eot: Callable[[], Any]
) -> TurnHandlingOptions:
    """livekit's turn handling for a session type; ``eot`` returns the end-of-turn model."""
    return {
        "turn_detection": turn_detection_mode(settings, session_type, eot),
        "endpointing": {
            "min_delay": settings.min_endpointing_delay,
            "max_delay": settings.max_endpointing_delay,
        },
        "interruption": {
            "enabled": settings.allow_interruptions,
            "mode": "vad",  # local; "adaptive" would call LiveKit's inference service
            "min_duration": settings.min_interruption_duration,
        },
    }


def apply_session_type(
    agent_session: AgentSession[Any],
    session_type: SessionType,
    settings: Settings,
    eot: Callable[[], Any],
) -> SessionTypeConfig:
    """Set an AgentSession's turn detection and audio input/output for ``session_type``.

    Works before the session starts (the flags then apply when its media is attached) and
    while it runs. Push-to-talk routing is the caller's (:class:`PushToTalk`); this leaves a
    push-to-talk session's input off, as between turns.
    """
    config = SESSION_TYPE_CONFIGS[session_type]
    agent_session.update_options(turn_detection=turn_detection_mode(settings, session_type, eot))
    # only on change: livekit warns about enabling audio that is not attached yet
    if agent_session.input.audio_enabled != config.audio_input:
        agent_session.input.set_audio_enabled(config.audio_input)
    if agent_session.output.audio_enabled != config.audio_output:
        agent_session.output.set_audio_enabled(config.audio_output)
    return config


class PushToTalk:
    """Routes the room's push-to-talk RPC calls to the caller's own AgentSession.

    The methods are registered with the room's first pipeline (whatever its type) and stay
    until :meth:`close`, so a caller never gets "method not supported": a participant
    without a push-to-talk session (yet) gets a coded ``no_session`` refusal.
    """

    def __init__(self, local_participant: Any, log: ContextLogger) -> None:
        self._local = local_participant
        self._log = log
        self._sessions: dict[str, AgentSession[Any]] = {}
        self._registered = False
        self.calls: dict[str, int] = {}

    def register(self) -> None:
        """Answer the push-to-talk methods from now on; safe to call twice."""
        if not self._registered:
            for method in PTT_METHODS:
                self._local.register_rpc_method(method, partial(self._handle, method))
            self._registered = True

    def add(self, identity: str, agent_session: AgentSession[Any]) -> None:
        """Start routing ``identity``'s calls to ``agent_session``."""
        self.register()
        self._sessions[identity] = agent_session
        agent_session.input.set_audio_enabled(False)  # nothing is heard until start_turn

    def serves(self, identity: str, agent_session: AgentSession[Any]) -> bool:
        """Whether ``identity``'s calls are routed to ``agent_session``."""
        return self._sessions.get(identity) is agent_session

    def remove(self, identity: str, agent_session: AgentSession[Any]) -> None:
        if self._sessions.get(identity) is agent_session:
            del self._sessions[identity]

    def close(self) -> None:
        """Unregister the RPC methods; safe to call twice."""
        self._sessions.clear()
        if self._registered:
            self._registered = False
            for method in PTT_METHODS:
                self._local.unregister_rpc_method(method)

    async def _handle(self, method: str, data: rtc.RpcInvocationData) -> str:
        agent_session = self._sessions.get(data.caller_identity)
        if agent_session is None:
            raise _refusal("no_session", "no push-to-talk session for this participant")
        self.calls[method] = self.calls.get(method, 0) + 1
        if method == RPC_START_TURN:
            try:
                agent_session.interrupt()
            except RuntimeError:
                # the reply being spoken disallows interruptions (CLARA_ALLOW_INTERRUPTIONS
                # off, or the apology): the turn cannot start over it
                raise _refusal("not_interruptible", NOT_INTERRUPTIBLE_MESSAGE) from None
            agent_session.clear_user_turn()
            agent_session.input.set_audio_enabled(True)
        elif method == RPC_END_TURN:
            agent_session.input.set_audio_enabled(False)
            agent_session.commit_user_turn()
        else:
            agent_session.input.set_audio_enabled(False)
            agent_session.clear_user_turn()
        return json.dumps({"ok": True, "method": method})


NOT_INTERRUPTIBLE_MESSAGE = (
    "Clara can't be interrupted right now; start your turn when she has finished speaking"
)


def _refusal(code: str, message: str) -> rtc.RpcError:
    """A push-to-talk refusal: ``message`` for a person, ``data`` coded JSON as the sync
    protocol's errors are."""
    data = json.dumps({"v": 1, "error": code, "message": message}, separators=(",", ":"))
    return rtc.RpcError(rtc.RpcError.ErrorCode.APPLICATION_ERROR, message, data)


TextHandler = Callable[[str], Coroutine[Any, Any, None]]


class ChatRouter:
    """Routes the room's chat text streams (topic ``lk.chat``) to the sender's pipeline.

    livekit's room input registers one chat handler per room, so with several participants
    only the first one's text would be heard; this router registers once and dispatches by
    the sender's identity instead.
    """

    def __init__(self, room: Any, log: ContextLogger) -> None:
        self._room = room
        self._log = log
        self._handlers: dict[str, TextHandler] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._registered = False

    def add(self, identity: str, handler: TextHandler) -> None:
        if not self._registered:
            self._room.register_text_stream_handler(TOPIC_CHAT, self._on_stream)
            self._registered = True
        self._handlers[identity] = handler

    def remove(self, identity: str, handler: TextHandler) -> None:
        if self._handlers.get(identity) == handler:
            del self._handlers[identity]

    async def aclose(self) -> None:
        """Unregister and stop reading; safe to call twice."""
        self._handlers.clear()
        if self._registered:
            self._registered = False
            self._room.unregister_text_stream_handler(TOPIC_CHAT)
        await aio.cancel_and_wait(*self._tasks)

    def _on_stream(self, reader: rtc.TextStreamReader, participant_identity: str) -> None:
        handler = self._handlers.get(participant_identity)
        if handler is None:
            self._log.debug("chat text from a participant without a session ignored")
            return
        task = asyncio.create_task(self._read(reader, handler, participant_identity))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, reader: rtc.TextStreamReader, handler: TextHandler, who: str) -> None:
        try:
            text = await reader.read_all()
            if len(text) > MAX_CHAT_TEXT:
                self._log.warning(
                    "chat text too long, ignored", extra={"participant": who, "chars": len(text)}
                )
                return
            if text.strip():
                await handler(text)
        except Exception as exc:
            self._log.warning(
                "failed to handle chat text", extra={"participant": who}, exc_info=exc
            )
