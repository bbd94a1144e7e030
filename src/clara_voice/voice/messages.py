"""What a voice pipeline reports of its conversation: each message, and each completed
turn's figures.

Both are built from livekit's own ``ChatMessage`` items: the text, the time, and the
per-turn metrics livekit measured (``ChatMessage.metrics``: end-of-turn delay,
transcription delay, LLM time to first token, TTS time to first byte, end to end), so no
figure here comes from a second stopwatch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from livekit.agents import llm


@dataclass(frozen=True, kw_only=True)
class HistoryMessage:
    """One message of a session's conversation, with its turn's figures."""

    role: Literal["user", "assistant"]
    text: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    metrics: dict[str, float] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "text": self.text,
            "at": self.at.isoformat(),
            "metrics": dict(self.metrics),
        }


@dataclass(frozen=True, kw_only=True)
class TurnMetrics:
    """One completed turn, with latencies (seconds) from livekit's own per-turn metrics."""

    at: datetime
    user_text: str
    reply_text: str
    end_of_turn_delay: float | None = None
    """End of the user's speech → the decision that the turn ended."""
    transcription_delay: float | None = None
    """End of the user's speech → the final transcript."""
    llm_ttft: float | None = None
    """LLM time to first token."""
    tts_ttfb: float | None = None
    """TTS time to first byte of audio."""
    e2e_latency: float | None = None
    """End of the user's speech → the first audio (or text) of the reply."""

    @property
    def processing_time(self) -> float | None:
        """Time spent producing the reply once the turn ended (LLM TTFT + TTS TTFB)."""
        parts = [v for v in (self.llm_ttft, self.tts_ttfb) if v is not None]
        return sum(parts) if parts else None


def history_message(item: llm.ChatMessage) -> HistoryMessage:
    """A user or assistant message of livekit's chat context, with its finite figures."""
    figures = {
        k: float(v)
        for k, v in item.metrics.items()
        if isinstance(v, int | float) and math.isfinite(v)
    }
    return HistoryMessage(
        role="user" if item.role == "user" else "assistant",
        text=item.text_content or "",
        at=datetime.fromtimestamp(item.created_at, UTC),
        metrics=figures,
    )


def turn_metrics(user: llm.ChatMessage | None, reply: llm.ChatMessage) -> TurnMetrics:
    """The figures of a turn: what livekit measured on the user's message and the reply."""
    heard = user.metrics if user is not None else {}
    said = reply.metrics
    return TurnMetrics(
        at=datetime.now(UTC),
        user_text=user.text_content or "" if user is not None else "",
        reply_text=reply.text_content or "",
        end_of_turn_delay=heard.get("end_of_turn_delay"),
        transcription_delay=heard.get("transcription_delay"),
        llm_ttft=said.get("llm_node_ttft"),
        tts_ttfb=said.get("tts_node_ttfb"),
        e2e_latency=said.get("e2e_latency"),
    )


__all__ = ["HistoryMessage", "TurnMetrics", "history_message", "turn_metrics"]
