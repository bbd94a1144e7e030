"""PerformanceMetrics (seed 002): the figures a ClaraVoiceAgent keeps about itself.

Latencies come from livekit's own per-turn metrics (``ChatMessage.metrics``), gathered
by the pipeline into :class:`~clara_voice.voice.messages.TurnMetrics`; this module only keeps
their recent averages next to the error and reconnection counts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from clara_voice import telemetry
from clara_voice.voice.messages import TurnMetrics

if TYPE_CHECKING:
    from clara_voice.agent.session import ParticipantSession

LATENCY_WINDOW = 20
"""Turns the latency averages cover."""


@dataclass(kw_only=True)
class PerformanceMetrics:
    """Seed 002's figures for one agent (seconds, MB, counts)."""

    audio_latency: float = 0.0
    """Mean end-of-speech → first reply audio over the last turns."""
    processing_time: float = 0.0
    """Mean LLM time-to-first-token + TTS time-to-first-byte over the last turns."""
    memory_usage: float = 0.0
    """Resident memory of the process in MB, as of the last health check."""
    error_count: int = 0
    reconnection_count: int = 0
    turn_count: int = 0
    _latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    _processing: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def record_turn(self, turn: TurnMetrics) -> None:
        self.turn_count += 1
        if turn.e2e_latency is not None:
            self._latencies.append(turn.e2e_latency)
            self.audio_latency = sum(self._latencies) / len(self._latencies)
        if (processing := turn.processing_time) is not None:
            self._processing.append(processing)
            self.processing_time = sum(self._processing) / len(self._processing)

    def turn_completed(self, session: ParticipantSession, turn: TurnMetrics) -> None:
        """The registry's ``turn_completed``: the turn is kept, exported and logged."""
        self.record_turn(turn)
        telemetry.record_turn(turn)
        session.log.info(
            "turn completed",
            extra={
                "message_count": session.message_count,
                "e2e_latency": turn.e2e_latency,
                "end_of_turn_delay": turn.end_of_turn_delay,
                "transcription_delay": turn.transcription_delay,
                "llm_ttft": turn.llm_ttft,
                "tts_ttfb": turn.tts_ttfb,
            },
        )
