"""Turns: session types (seed 003) and the turn handling each one means.

A participant's session type comes from its ``clara.session_type`` attribute (or
``CLARA_DEFAULT_SESSION_TYPE``) when its session is created, and may be switched while it is
connected (``LiveKitPipeline.set_session_type``): every AgentSession is built with the whole
pipeline (STT, VAD, LLM, TTS) and :func:`apply_session_type` turns its audio and turn
detection on or off, so a switch keeps the same conversation:

==========  ==================  ===========================================================
type        turn detection      how a turn ends
==========  ==================  ===========================================================
text        none                each text message is a turn; no audio in or out
voice-ptt   client (manual)     the client calls the push-to-talk RPCs (voice/routing.py)
voice-vad   server              ``CLARA_TURN_DETECTION``: a patient wait that grows when
                                the words or the sound say the sentence goes on
                                (`combined`, the default: voice/listening.py), silence
                                (`vad`), the STT's endpointing (`stt`), livekit's bundled
                                end-of-turn model (`eot`), or whether the words end a
                                sentence (`transcript`)
==========  ==================  ===========================================================

Each turn detection has its own timing (:data:`TURN_TIMING`: the VAD's silence, the wait
when nothing says the sentence goes on, the wait when something does), chosen on the
turn-taking bench so that none cuts a person off at the pauses people make inside a
sentence (up to 0.7 s), in any language, except `transcript`, kept for its speed;
``CLARA_VAD_MIN_SILENCE_DURATION``, ``CLARA_MIN_ENDPOINTING_DELAY`` and
``CLARA_MAX_ENDPOINTING_DELAY`` override them.

:data:`SESSION_TYPE_CONFIGS` is that table as data (seed 003's "session type mapping");
:func:`expected_effective` is what a pipeline of a type should report, for comparing with
what it does report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from livekit import rtc
from livekit.agents.voice.turn import TurnDetectionMode, TurnHandlingOptions

from clara_voice.config import Settings, TurnDetection
from clara_voice.logging import ContextLogger
from clara_voice.states import SESSION_TYPE_ATTRIBUTE, SESSION_TYPES, SessionType
from clara_voice.voice.completeness import TranscriptTurnDetector

if TYPE_CHECKING:
    from livekit.agents import AgentSession


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


@dataclass(frozen=True, slots=True)
class TurnTiming:
    """Seconds: the VAD's silence, the wait for a turn nothing says goes on (livekit's
    ``min_delay``), and for one that goes on (``max_delay``), from the end of speech."""

    vad_silence: float
    min_delay: float
    max_delay: float


TURN_TIMING: Mapping[TurnDetection, TurnTiming] = {
    # a turn ends 0.9 s after the voice stops, 1.5 s when the words or the sound say more
    # is coming; the pauses people make inside a sentence last up to about 0.7 s
    "combined": TurnTiming(vad_silence=0.3, min_delay=0.9, max_delay=1.5),
    # silence alone: longer than a pause inside a sentence, in every language
    "vad": TurnTiming(vad_silence=0.5, min_delay=0.9, max_delay=0.9),
    # the STT's endpoint (Deepgram's after 25 ms of silence) plus the same patient wait
    "stt": TurnTiming(vad_silence=0.5, min_delay=0.9, max_delay=0.9),
    # livekit's model with livekit's own endpointing (0.5 s / 3 s); the model needs 0.25 s
    "eot": TurnTiming(vad_silence=0.3, min_delay=0.5, max_delay=3.0),
    # the word list: fast, measured to cut pauses after nouns, verbs and pronouns
    "transcript": TurnTiming(vad_silence=0.2, min_delay=0.2, max_delay=1.2),
}
"""Each turn detection's own timing (docs/operations.md#turns has the table and why)."""


def turn_timing(settings: Settings) -> TurnTiming:
    """The timing ``settings`` ask for: the turn detection's own, with overrides."""
    own = TURN_TIMING[settings.turn_detection]
    return TurnTiming(
        vad_silence=_given(settings.vad_min_silence_duration, own.vad_silence),
        min_delay=_given(settings.min_endpointing_delay, own.min_delay),
        max_delay=_given(settings.max_endpointing_delay, own.max_delay),
    )


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


def turn_detection_mode(
    settings: Settings, session_type: SessionType, eot: Callable[[], Any]
) -> TurnDetectionMode:
    """livekit's turn detection for a session type; ``eot`` returns the session's detector
    (livekit's end-of-turn model for `eot`, the listening detector for `combined`)."""
    if SESSION_TYPE_CONFIGS[session_type].turn_detection != "server":
        return "manual"  # text turns are messages; push-to-talk turns are the client's RPCs
    mode = settings.turn_detection
    if mode == "eot" or mode == "combined":
        detection: TurnDetectionMode = eot()
        return detection
    if mode == "transcript":
        return _TRANSCRIPT
    return mode


_TRANSCRIPT = TranscriptTurnDetector()  # stateless: one serves every session


def turn_handling(
    settings: Settings, session_type: SessionType, eot: Callable[[], Any]
) -> TurnHandlingOptions:
    """livekit's turn handling for a session type; ``eot`` returns the session's detector."""
    timing = turn_timing(settings)
    return {
        "turn_detection": turn_detection_mode(settings, session_type, eot),
        "endpointing": {"min_delay": timing.min_delay, "max_delay": timing.max_delay},
        "preemptive_generation": {
            "enabled": settings.preemptive_generation != "off",
            "preemptive_tts": settings.preemptive_generation == "llm_tts",
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
