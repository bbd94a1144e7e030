"""How a pipeline reaches its participant's media, and the bundled apology clip.

:class:`~clara_voice.voice.pipeline.LiveKitPipelineFactory` hands each new ``AgentSession`` to a
:class:`MediaBinding`, which connects it to one participant's audio and text, starts it and
returns a :class:`MediaLink` that the pipeline closes with the session. :class:`RoomMedia`
is the production binding: a livekit ``RoomIO`` per participant, each given a
:class:`~clara_voice.voice.privacy.ParticipantView` of the room's
:class:`~clara_voice.voice.surface.RoomSurface`, so that what it publishes and sends
reaches that participant only. livekit's RoomIO follows its participant's identity
by itself: when the participant drops and comes back (``close_on_disconnect`` off), or
publishes a new microphone, its audio input picks the new track up. Tests bind livekit's
audio and text I/O seams directly. :func:`apology_audio` reads the spoken apology a
pipeline plays when the TTS itself failed a turn.

"""

from __future__ import annotations

import wave
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any, Protocol, cast

from livekit import rtc
from livekit.agents import AgentSession, APIError, tts
from livekit.agents.types import APIConnectOptions
from livekit.agents.voice import room_io

from clara_voice._closing import finish_within
from clara_voice.logging import ContextLogger
from clara_voice.states import SessionType
from clara_voice.voice.assistant import ClaraAssistant
from clara_voice.voice.privacy import ParticipantView
from clara_voice.voice.surface import RoomSurface


class MediaLink(Protocol):
    """What a MediaBinding leaves running for one participant; ``aclose`` unpublishes and
    releases all of it."""

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
        surface: RoomSurface,
        participant: rtc.RemoteParticipant,
        session_type: SessionType,
        log: ContextLogger,
    ) -> MediaLink: ...


ROOM_IO_CLOSE_TIMEOUT = 3.0
"""Bound on closing one participant's RoomIO."""


def agent_track_name(identity: str) -> str:
    """The name of the agent audio track that answers ``identity``."""
    return f"clara-voice-{identity}"


class RoomMedia:
    """Production binding: a livekit ``RoomIO`` per participant, private to it."""

    async def start(
        self,
        agent_session: AgentSession[Any],
        assistant: ClaraAssistant,
        *,
        surface: RoomSurface,
        participant: rtc.RemoteParticipant,
        session_type: SessionType,
        log: ContextLogger,
    ) -> MediaLink:
        view = ParticipantView(surface, participant.identity)
        options = room_io.RoomOptions(
            participant_identity=participant.identity,
            close_on_disconnect=False,  # ClaraVoiceAgent owns what a disconnect means
            text_input=False,  # routed per room by ChatRouter
            audio_input=True,  # even for text: the session type may switch to voice
            audio_output=room_io.AudioOutputOptions(
                track_name=agent_track_name(participant.identity)
            ),
            text_output=True,
        )
        # the view stands in for the room (see _privacy): RoomIO only uses its public API
        link = room_io.RoomIO(agent_session, cast(rtc.Room, view), options=options)
        room_link = _RoomLink(link, view, log)
        await link.start()
        try:
            await agent_session.start(assistant)
        except BaseException:
            await room_link.aclose()
            raise
        return room_link


class _RoomLink:
    def __init__(self, room_io: room_io.RoomIO, view: ParticipantView, log: ContextLogger) -> None:
        self._room_io = room_io
        self.view = view
        self.log = log

    async def aclose(self) -> None:
        try:
            # bounded: a room going away under it must not hold the session's cleanup
            closing = self._room_io.aclose()
            await finish_within(closing, ROOM_IO_CLOSE_TIMEOUT, what="closing RoomIO", log=self.log)
        finally:
            # RoomIO's audio output never unpublishes its track: the view does
            await self.view.aclose()


_APOLOGY_FRAME_MS = 20


async def apology_audio() -> AsyncIterator[rtc.AudioFrame]:
    """The bundled spoken apology, for turns where the TTS itself failed."""
    clip = resources.files("clara_voice").joinpath("resources/apology.wav")
    with clip.open("rb") as f, wave.open(f) as wav:
        rate = wav.getframerate()
        samples = rate * _APOLOGY_FRAME_MS // 1000
        while chunk := wav.readframes(samples):
            yield rtc.AudioFrame(chunk, rate, 1, len(chunk) // 2)


async def spoken_apology(
    speech: tts.TTS[Any] | None, text: str, conn_options: APIConnectOptions, log: ContextLogger
) -> AsyncIterator[rtc.AudioFrame]:
    """``text`` in the TTS's voice, or the bundled clip when there is no TTS.

    The apology is handed to livekit as audio, never as text for livekit to synthesize: a
    TTS that failed the apology too ended livekit's ``tts_say`` task with an error nobody
    read ("Task exception was never retrieved", a traceback in the log). When the TTS fails
    it here, the apology ends: the TTS has reported its failure as the session's error (an
    ``APIError``; livekit emits it before raising), which is counted and apologised for
    with the clip. Anything else the TTS raises has reported nothing, so the clip speaks
    here."""
    if speech is None:
        async for frame in apology_audio():
            yield frame
        return
    try:
        async with speech.synthesize(text, conn_options=conn_options) as stream:
            async for audio in stream:
                yield audio.frame
        return
    except APIError as exc:
        log.warning("the TTS could not speak the apology", extra={"error": str(exc)})
        return
    except Exception as exc:  # not the TTS's own report: nothing else will apologise
        log.warning("the TTS could not speak the apology", exc_info=exc)
    async for frame in apology_audio():
        yield frame
