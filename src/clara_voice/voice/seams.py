"""Where the agent and the voice pipeline meet: the interfaces between them.

The agent asks a :class:`PipelineFactory` for one :class:`VoicePipeline` per participant
and hands it a :class:`PipelineEvents` of its own for that participant, through which the
pipeline reports its conversation: every message, every completed turn, a provider that
failed a turn for good, and a close it did not ask for. The pipeline knows nothing of the
agent: it is told who it talks to, in which session type, with which earlier messages,
and reports what happened; what that means for the session is the agent's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from livekit import rtc

from clara_voice.logging import ContextLogger
from clara_voice.states import SessionType
from clara_voice.voice.messages import HistoryMessage, TurnMetrics
from clara_voice.voice.surface import RoomSurface
from clara_voice.voice.turns import EffectiveConfig


class PipelineEvents(Protocol):
    """What a pipeline reports about its participant's conversation."""

    def message_added(self, message: HistoryMessage) -> None:
        """A user or assistant message joined the conversation."""
        ...

    def turn_completed(self, turn: TurnMetrics) -> None:
        """The agent answered a turn (its figures from livekit's metrics)."""
        ...

    def provider_failed(self, source: str, error: object) -> None:
        """A provider failed a turn after livekit's retries and fallbacks (the participant
        heard or read the apology)."""
        ...

    def pipeline_closed(self, reason: str, *, error: bool) -> None:
        """livekit closed the pipeline on its own: after an unrecoverable error (``error``),
        or because the job is shutting down."""
        ...


class VoicePipeline(Protocol):
    """A running pipeline for one participant. ``aclose`` is idempotent.

    Its media follows the participant's identity by itself: a participant that drops and
    comes back, or publishes a new microphone, is heard again without a word from the agent.
    """

    @property
    def session_type(self) -> SessionType:
        """The type the pipeline runs now."""
        ...

    def set_session_type(self, session_type: SessionType) -> None:
        """Switch the session type while connected, keeping the conversation; a no-op for
        the current type; raises when the switch fails (the type is then unchanged)."""
        ...

    def effective(self) -> EffectiveConfig:
        """What the pipeline actually does now (compare with ``turns.expected_effective``)."""
        ...

    def apologize(self) -> None:
        """Say (or, without audio, write) ``CLARA_APOLOGY`` to the participant now."""
        ...

    async def aclose(self) -> None: ...


class PipelineFactory(Protocol):
    """Starts participants' pipelines; owns what they share (providers, routers).

    ``start`` may be cancelled (the participant left while it was starting): it must then
    close whatever it had already opened before re-raising.
    """

    async def start(
        self,
        *,
        surface: RoomSurface,
        participant: rtc.RemoteParticipant,
        session_type: SessionType,
        history: Sequence[HistoryMessage],
        events: PipelineEvents,
        log: ContextLogger,
    ) -> VoicePipeline:
        """``participant``'s pipeline in ``session_type``, continuing from ``history`` (its
        own earlier messages of the conversation), in the room of ``surface`` (whose single
        owners it shares with the room's other pipelines), reporting to ``events`` and
        logging to ``log``."""
        ...

    async def aclose(self) -> None: ...


__all__ = ["PipelineEvents", "PipelineFactory", "VoicePipeline"]
