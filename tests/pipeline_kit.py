"""Running the real pipeline offline: livekit's I/O seams instead of a room, loopback
providers instead of the cloud, and real speech from espeak-ng."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession

from clara_voice.assistant import ClaraAssistant
from clara_voice.config import SessionType

from .audio import CaptureAudioOutput, CaptureTextOutput, WavAudioInput


@dataclass
class ParticipantMedia:
    """What one participant's pipeline hears and says."""

    session_type: SessionType
    agent_session: AgentSession[Any]
    mic: WavAudioInput | None = None
    speaker: CaptureAudioOutput | None = None
    text: CaptureTextOutput = field(default_factory=CaptureTextOutput)
    relinked: list[str] = field(default_factory=list)

    def relink(self, identity: str) -> None:
        self.relinked.append(identity)

    async def aclose(self) -> None:
        return None


class SeamMedia:
    """A MediaBinding that links livekit's audio input/output and text output seams.

    In production ``RoomMedia`` links the same seams to the room's tracks and streams.
    """

    def __init__(self) -> None:
        self.participants: dict[str, ParticipantMedia] = {}

    async def start(
        self,
        agent_session: AgentSession[Any],
        assistant: ClaraAssistant,
        *,
        room: Any,
        participant: rtc.RemoteParticipant,
        session_type: SessionType,
    ) -> ParticipantMedia:
        media = ParticipantMedia(session_type=session_type, agent_session=agent_session)
        if session_type != "text":
            media.mic = self.make_mic()
            media.speaker = CaptureAudioOutput()
            agent_session.input.audio = media.mic
            agent_session.output.audio = media.speaker
        agent_session.output.transcription = media.text
        self.participants[participant.identity] = media
        await agent_session.start(assistant)
        return media

    def make_mic(self) -> WavAudioInput:
        """The microphone of a new voice participant (the benchmark hands in its own)."""
        return WavAudioInput()

    def __getitem__(self, identity: str) -> ParticipantMedia:
        return self.participants[identity]
