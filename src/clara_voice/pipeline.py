"""The voice pipeline seam: what ClaraVoiceAgent asks for each participant session.

A :class:`PipelineFactory` starts one :class:`VoicePipeline` per ParticipantSession and the
agent closes it at cleanup. The factory is injected (``ClaraVoiceAgent(..., pipeline=...)``)
so tests drive the agent with a fake and the worker with the real livekit pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from livekit import rtc

    from .sessions import ParticipantSession


class VoicePipeline(Protocol):
    """A running pipeline for one participant. ``aclose`` is idempotent."""

    async def aclose(self) -> None: ...


class PipelineFactory(Protocol):
    """Starts a participant's pipeline.

    ``start`` may be cancelled (the participant left while it was starting): it must then
    close whatever it had already opened before re-raising.
    """

    async def start(
        self,
        *,
        room: rtc.Room,
        participant: rtc.RemoteParticipant,
        session: ParticipantSession,
    ) -> VoicePipeline: ...
