"""How a pipeline reaches its participant's media, and the bundled apology clip.

:class:`~clara_voice.pipeline.LiveKitPipelineFactory` hands each new ``AgentSession`` to a
:class:`MediaBinding`, which connects it to one participant's audio and text, starts it and
returns a :class:`MediaLink` that the pipeline keeps to re-link (after a drop or a rejoin)
and to close. :class:`RoomMedia` is the production binding, a livekit ``RoomIO`` of ours;
tests bind livekit's audio and text I/O seams directly. :func:`apology_audio` reads the
spoken apology a pipeline plays when the TTS itself failed a turn.

The public names are re-exported by :mod:`clara_voice.pipeline`; import them from there.
"""

from __future__ import annotations

import wave
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any, Protocol

from livekit import rtc
from livekit.agents import AgentSession
from livekit.agents.voice import room_io

from .assistant import ClaraAssistant
from .config import SessionType


class MediaLink(Protocol):
    """What a MediaBinding leaves running for one participant."""

    def relink(self, identity: str) -> None: ...

    async def aclose(self) -> None: ...


class MediaBinding(Protocol):
    """Connects an AgentSession to its participant's audio and text and starts it.

    The audio input and output are bound whatever the session type (which may change
    later); the AgentSession's enabled flags, already set for the type, decide what is used.
    """

    async def start(
        self,
        agent_session: AgentSession[Any],
        assistant: ClaraAssistant,
        *,
        room: rtc.Room,
        participant: rtc.RemoteParticipant,
        session_type: SessionType,
    ) -> MediaLink: ...


class RoomMedia:
    """Production binding: a livekit ``RoomIO`` of ours linked to one participant."""

    async def start(
        self,
        agent_session: AgentSession[Any],
        assistant: ClaraAssistant,
        *,
        room: rtc.Room,
        participant: rtc.RemoteParticipant,
        session_type: SessionType,
    ) -> MediaLink:
        options = room_io.RoomOptions(
            participant_identity=participant.identity,
            close_on_disconnect=False,  # ClaraVoiceAgent owns what a disconnect means
            text_input=False,  # routed per room by ChatRouter
            audio_input=True,  # even for text: the session type may switch to voice
            audio_output=True,
            text_output=True,
        )
        link = room_io.RoomIO(agent_session, room, options=options)
        await link.start()
        try:
            await agent_session.start(assistant)
        except BaseException:
            await link.aclose()
            raise
        return _RoomLink(link)


class _RoomLink:
    def __init__(self, room_io: room_io.RoomIO) -> None:
        self._room_io = room_io

    def relink(self, identity: str) -> None:
        # unlink then link again: the audio input re-subscribes to the participant's track
        self._room_io.unset_participant()
        self._room_io.set_participant(identity)

    async def aclose(self) -> None:
        await self._room_io.aclose()


_APOLOGY_FRAME_MS = 20


async def apology_audio() -> AsyncIterator[rtc.AudioFrame]:
    """The bundled spoken apology, for turns where the TTS itself failed."""
    clip = resources.files("clara_voice").joinpath("resources/apology.wav")
    with clip.open("rb") as f, wave.open(f) as wav:
        rate = wav.getframerate()
        samples = rate * _APOLOGY_FRAME_MS // 1000
        while chunk := wav.readframes(samples):
            yield rtc.AudioFrame(chunk, rate, 1, len(chunk) // 2)
