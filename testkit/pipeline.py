"""Running the real pipeline offline: livekit's I/O seams instead of a room, loopback
providers instead of the cloud, and real speech from espeak-ng.

:func:`running_harness` runs a ClaraVoiceAgent with the real LiveKitPipelineFactory over
:class:`SeamMedia`; each test module wraps it in its own ``harness`` fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession, inference
from livekit.agents.utils import http_context

from clara_voice.agent.agent import ClaraVoiceAgent
from clara_voice.agent.session import ParticipantSession
from clara_voice.config import Settings, load_settings
from clara_voice.persistence.factory import build_backend
from clara_voice.states import SESSION_TYPE_ATTRIBUTE, SessionType
from clara_voice.voice.assistant import ClaraAssistant
from clara_voice.voice.pipeline import LiveKitPipelineFactory
from clara_voice.voice.turns import turn_timing
from testkit.audio import (
    CaptureAudioOutput,
    CaptureTextOutput,
    WavAudioInput,
    load_frames,
    speech_wav,
)
from testkit.fakes import FakeRoom, make_participant
from testkit.loopback_providers import LoopbackDeepgram, LoopbackOpenAI


@dataclass
class ParticipantMedia:
    """What one participant's pipeline hears and says."""

    session_type: SessionType
    agent_session: AgentSession[Any]
    mic: WavAudioInput | None = None
    speaker: CaptureAudioOutput | None = None
    text: CaptureTextOutput = field(default_factory=CaptureTextOutput)

    async def aclose(self) -> None:
        return None


class SeamMedia:
    """A MediaBinding that links livekit's audio input/output and text output seams.

    In production ``RoomMedia`` links the same seams to the room's tracks and streams. Every
    participant gets a microphone and a speaker, as ``RoomMedia`` binds audio whatever the
    session type (it may switch); the AgentSession's enabled flags decide what is used.
    """

    def __init__(self) -> None:
        self.participants: dict[str, ParticipantMedia] = {}

    async def start(
        self,
        agent_session: AgentSession[Any],
        assistant: ClaraAssistant,
        *,
        surface: Any,
        participant: rtc.RemoteParticipant,
        session_type: SessionType,
        log: Any = None,
    ) -> ParticipantMedia:
        media = ParticipantMedia(session_type=session_type, agent_session=agent_session)
        media.mic = self.make_mic()
        media.speaker = CaptureAudioOutput()
        agent_session.input.audio = media.mic
        agent_session.output.audio = media.speaker
        agent_session.output.transcription = media.text
        self.participants[participant.identity] = media
        await agent_session.start(assistant)
        return media

    async def aclose(self) -> None:
        return None

    def make_mic(self) -> WavAudioInput:
        """The microphone of a new voice participant (the benchmark hands in its own)."""
        return WavAudioInput()

    def __getitem__(self, identity: str) -> ParticipantMedia:
        return self.participants[identity]


TURN_TIMEOUT = 20.0


async def until(predicate: Callable[[], object], *, timeout: float, what: str) -> None:
    """Wait (bounded) for a condition the pipeline reaches asynchronously."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def spoken(server: LoopbackOpenAI) -> str:
    """Everything the TTS was asked to say (livekit sends it sentence by sentence)."""
    return " ".join(str(request["input"]) for request in server.speech_requests)


def user_texts(request: dict[str, Any]) -> list[str]:
    return [str(m["content"]) for m in request["messages"] if m["role"] == "user"]


@dataclass
class Harness:
    agent: ClaraVoiceAgent
    room: FakeRoom
    media: SeamMedia
    openai: LoopbackOpenAI
    deepgram: LoopbackDeepgram
    settings: Settings

    async def join(self, identity: str, session_type: str | None = None) -> ParticipantSession:
        attributes = {SESSION_TYPE_ATTRIBUTE: session_type} if session_type else {}
        participant = make_participant(identity, attributes=attributes)
        self.room.remote_participants[identity] = participant
        session = await self.agent.on_participant_joined(participant)
        assert session is not None, f"{identity} got no session"
        return session

    def speak(self, identity: str, text: str) -> Any:
        mic = self.media[identity].mic
        assert mic is not None
        return mic.say(load_frames(speech_wav(text)))


@contextlib.asynccontextmanager
async def running_harness(
    room: FakeRoom,
    data_dir: Path,
    *,
    provider_key: str | None = None,
    settings_for: Callable[[LoopbackOpenAI, LoopbackDeepgram], dict[str, Any]] | None = None,
    persist: bool = False,
) -> AsyncIterator[Harness]:
    """A started ClaraVoiceAgent with the real pipeline factory and loopback providers;
    a test module's ``harness`` fixture wraps it. The providers accept any key, or only
    ``provider_key``; ``settings_for(openai, deepgram)`` gives settings of the test's own;
    with ``persist`` the agent stores the conversation in the settings' backend."""
    async with (
        LoopbackOpenAI(api_key=provider_key) as openai_server,
        LoopbackDeepgram(api_key=provider_key) as deepgram_server,
    ):
        settings = load_settings(
            **{
                "data_dir": data_dir,
                "stt_base_url": deepgram_server.base_url,
                "llm_base_url": openai_server.base_url,
                "tts_base_url": openai_server.base_url,
                "provider_max_retry": 0,
                "provider_retry_interval": 0.0,
                "provider_timeout": 5.0,
                **(settings_for(openai_server, deepgram_server) if settings_for else {}),
            }
        )
        http_context._new_session_ctx()  # what livekit's job runner provides to plugins
        media = SeamMedia()
        vad = inference.VAD(
            min_silence_duration=turn_timing(settings).vad_silence,
            activation_threshold=settings.vad_activation_threshold,
        )
        factory = LiveKitPipelineFactory(settings, vad=vad, media=media)
        backend = build_backend(settings) if persist else None
        agent = ClaraVoiceAgent(room, settings, pipeline=factory, backend=backend)
        await agent.start()
        try:
            yield Harness(agent, room, media, openai_server, deepgram_server, settings)
        finally:
            await agent.aclose()
            await http_context._close_http_ctx()
