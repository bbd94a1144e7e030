"""The configurations the turn bench compares, and how each one's AgentSession is started.

``livekit-defaults`` is a bare ``AgentSession(stt, llm, tts, vad=inference.VAD())``;
``clara-default`` is clara_voice's ``LiveKitPipelineFactory`` with default Settings,
started through ``factory.start`` as a room job does; every other configuration is
clara_voice with Settings overrides (``--set``, or the candidates of ``--sweep``).

Providers are the fakes of ``bench/_fakes.py``: instant by default, or with the latencies
of hosted providers (``REALISTIC``: STT final 150-300 ms after the end of speech, LLM first
token 300-600 ms, TTS first byte 100-200 ms), drawn from a seeded generator so a run can
be repeated.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from livekit.agents import Agent, AgentSession, inference, stt, utils, vad

from bench._fake_replies import FakeLLM, FakeTTS
from bench._fakes import REALISTIC, FakeStreamingSTT, FakeSTT, TranscriptSource
from bench.speech import MarkedMic
from clara_voice.config import load_settings
from clara_voice.logging import get_logger
from clara_voice.voice.messages import TurnMetrics
from clara_voice.voice.pipeline import LiveKitPipelineFactory
from clara_voice.voice.providers import Providers
from clara_voice.voice.surface import RoomSurface
from clara_voice.voice.turns import turn_timing
from testkit.audio import CaptureAudioOutput
from testkit.fakes import FakeRoom, make_participant
from testkit.pipeline import SeamMedia

REPLY = "Sure, a table for two tonight."
REPLY_SECONDS = 0.3
IDENTITY = "bench-user"

STTKind = Literal["batch", "streaming"]


@dataclass(frozen=True)
class Config:
    name: str
    kind: Literal["livekit", "clara"]
    overrides: dict[str, Any] = field(default_factory=dict)
    stt: STTKind = "batch"

    @property
    def max_delay(self) -> float:
        """The longest the configuration may wait for the end of a turn."""
        if self.kind == "livekit":
            return 3.0
        return turn_timing(load_settings(**self.overrides)).max_delay


@dataclass(frozen=True)
class Latencies:
    """Whether the fake providers take time, and the seed of their generator."""

    realistic: bool = False
    seed: int = 7

    def rng(self, run: int) -> random.Random | None:
        return random.Random(self.seed * 1000 + run) if self.realistic else None

    def of(self, provider: str) -> dict[str, Any]:
        return dict(REALISTIC[provider]) if self.realistic else {}


@dataclass
class Started:
    agent_session: AgentSession[Any]
    vad: vad.VAD
    stt: stt.STT[Any]
    aclose: Callable[[], Awaitable[None]]


class BenchMedia(SeamMedia):
    """``SeamMedia`` with the run's marked microphone instead of a fresh one."""

    def __init__(self, mic: MarkedMic) -> None:
        super().__init__()
        self.mic = mic

    def make_mic(self) -> MarkedMic:
        return self.mic

    @property
    def speaker(self) -> CaptureAudioOutput:
        speaker = self.participants[IDENTITY].speaker
        assert speaker is not None
        return speaker


def _providers(
    config: Config,
    heard: TranscriptSource,
    latencies: Latencies,
    run: int,
    endpoint_silence: float,
    language: str,
    live_stt: Callable[[str], stt.STT[Any]] | None,
) -> tuple[stt.STT[Any], FakeLLM, FakeTTS]:
    rng = latencies.rng(run)
    stt_options = latencies.of("stt")
    fake_stt: stt.STT[Any]
    if live_stt is not None:
        fake_stt = live_stt(language)
    elif config.stt == "streaming":
        fake_stt = FakeStreamingSTT(
            heard, endpoint_silence=endpoint_silence, rng=rng, language=language, **stt_options
        )
    else:
        fake_stt = FakeSTT(heard, rng=rng, language=language, **stt_options)
    fake_llm = FakeLLM(REPLY, rng=rng, **latencies.of("llm"))
    fake_tts = FakeTTS(seconds=REPLY_SECONDS, rng=rng, **latencies.of("tts"))
    return fake_stt, fake_llm, fake_tts


class _Events:
    """clara_voice's PipelineEvents: nothing kept (the bench reads livekit's own events)."""

    def message_added(self, message: Any) -> None:
        pass

    def turn_completed(self, turn: TurnMetrics) -> None:
        pass

    def provider_failed(self, source: str, error: object) -> None:
        pass

    def pipeline_closed(self, reason: str, *, error: bool) -> None:
        pass


async def start(
    config: Config,
    media: BenchMedia,
    heard: TranscriptSource,
    *,
    latencies: Latencies,
    run: int,
    endpoint_silence: float,
    language: str = "en",
    live_stt: Callable[[str], stt.STT[Any]] | None = None,
) -> Started:
    """A started AgentSession of ``config``, bound to ``media``; ``live_stt`` makes a real
    recognizer to use instead of the scripted STT."""
    fake_stt, fake_llm, fake_tts = _providers(
        config, heard, latencies, run, endpoint_silence, language, live_stt
    )
    log = get_logger("clara_voice.bench", participant=IDENTITY)
    participant = make_participant(IDENTITY)
    if config.kind == "livekit":
        the_vad = inference.VAD()
        agent_session: AgentSession[Any] = AgentSession(
            stt=fake_stt, llm=fake_llm, tts=fake_tts, vad=the_vad
        )

        async def aclose() -> None:
            await agent_session.aclose()
            for provider in (fake_stt, fake_llm, fake_tts):
                await provider.aclose()

        try:
            await media.start(
                agent_session,
                Agent(instructions="You are a helpful voice assistant."),
                surface=None,
                participant=participant,
                session_type="voice-vad",
                log=log,
            )
        except BaseException:
            await aclose()
            raise
        return Started(agent_session, the_vad, fake_stt, aclose)

    settings = load_settings(**{"stt_language": language, **config.overrides})
    the_vad = inference.VAD(  # as clara_voice.worker.prewarm builds it
        min_silence_duration=turn_timing(settings).vad_silence,
        activation_threshold=settings.vad_activation_threshold,
    )
    providers = Providers(stt=fake_stt, llm=fake_llm, tts=fake_tts)
    factory = LiveKitPipelineFactory(settings, vad=the_vad, providers=providers, media=media)
    room = FakeRoom("bench-room")
    room.remote_participants[IDENTITY] = participant
    surface = RoomSurface(room, log=log)  # type: ignore[arg-type]
    try:
        pipeline = await factory.start(
            surface=surface,
            participant=participant,
            session_type="voice-vad",
            history=(),
            events=_Events(),
            log=log,
        )
    except BaseException:
        await factory.aclose()
        await surface.aclose()
        raise

    async def close_clara() -> None:
        await pipeline.aclose()
        await factory.aclose()  # closes the providers
        await surface.aclose()

    return Started(pipeline.agent_session, the_vad, providers.stt, close_clara)


def describe_session(started: Started) -> dict[str, Any]:
    """The turn handling the AgentSession actually runs with."""
    handling = started.agent_session.options.turn_handling
    detection = handling.get("turn_detection")
    endpointing = handling["endpointing"]
    preemptive = handling["preemptive_generation"]
    opts = getattr(started.vad, "_opts", None)
    return {
        "turn_detection": detection
        if detection is None or isinstance(detection, str)
        else f"detector:{getattr(detection, 'model', type(detection).__name__)}",
        "min_endpointing_delay": endpointing.get("min_delay"),
        "max_endpointing_delay": endpointing.get("max_delay"),
        "endpointing_mode": endpointing.get("mode"),
        "vad_min_silence_duration": getattr(opts, "min_silence_duration", None),
        "vad_activation_threshold": getattr(opts, "activation_threshold", None),
        "preemptive_generation": preemptive.get("enabled"),
        "preemptive_tts": preemptive.get("preemptive_tts"),
        "interruption_mode": handling["interruption"].get("mode")
        or ("auto (adaptive)" if utils.is_dev_mode() or utils.is_hosted() else "auto (vad)"),
        "stt": f"{started.stt.model} (streaming={started.stt.capabilities.streaming})",
    }


DETECTORS: dict[str, tuple[dict[str, Any], STTKind]] = {
    "combined": ({"turn_detection": "combined"}, "batch"),
    "vad": ({"turn_detection": "vad"}, "batch"),
    "stt": ({"turn_detection": "stt"}, "streaming"),
    "eot": ({"turn_detection": "eot"}, "batch"),
    "transcript": ({"turn_detection": "transcript"}, "batch"),
}
"""Each of clara_voice's turn detections with its own timing (``--detectors``)."""

SWEEP: tuple[tuple[dict[str, Any], STTKind], ...] = (
    ({"turn_detection": "vad", "vad_min_silence_duration": 0.7, "min_endpointing_delay": 0.5},
     "batch"),  # clara_voice's defaults before `transcript`
    ({"turn_detection": "combined", "min_endpointing_delay": 0.7}, "batch"),
    ({"turn_detection": "combined", "min_endpointing_delay": 0.8}, "batch"),
    ({"turn_detection": "combined", "min_endpointing_delay": 1.0}, "batch"),
    ({"turn_detection": "vad", "min_endpointing_delay": 0.8}, "batch"),
    ({"turn_detection": "transcript", "vad_min_silence_duration": 0.3,
      "min_endpointing_delay": 0.3, "max_endpointing_delay": 1.5}, "batch"),
)  # fmt: skip
"""Other candidates (``--sweep``)."""


__all__ = [
    "DETECTORS",
    "IDENTITY",
    "REPLY",
    "SWEEP",
    "BenchMedia",
    "Config",
    "Latencies",
    "STTKind",
    "Started",
    "describe_session",
    "start",
]
