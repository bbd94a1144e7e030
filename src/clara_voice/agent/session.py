"""ParticipantSession: the per-participant record a ClaraVoiceAgent keeps (seed 000/001).

The seeds call this record ``AgentSession``; livekit-agents already uses that name for its
pipeline runtime, so here it is ``ParticipantSession``. It holds the seed's fields and what
the agent owns for that participant (its voice pipeline, the task that starts it).

``connection_state`` moves only through :func:`check_transition`'s table; the agent's single
transition function uses it, logs each move with its reason, and counts it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from clara_voice.logging import ContextLogger
from clara_voice.states import ConnectionState, SessionType
from clara_voice.voice.messages import HistoryMessage, TurnMetrics
from clara_voice.voice.seams import VoicePipeline

_ALLOWED: dict[ConnectionState, frozenset[ConnectionState]] = {
    "connecting": frozenset({"connected", "error", "closed"}),
    "connected": frozenset({"reconnecting", "error", "closed"}),
    "reconnecting": frozenset({"connected", "error", "closed"}),
    # a failed pipeline is rebuilt for the same session (agent/revival.py)
    "error": frozenset({"connected", "closed"}),
    "closed": frozenset(),
}


class IllegalTransition(RuntimeError):
    """A connection_state move the state machine does not allow."""


def check_transition(current: ConnectionState, new: ConnectionState) -> None:
    """Raise :class:`IllegalTransition` unless ``current → new`` is a legal move."""
    if new not in _ALLOWED[current]:
        raise IllegalTransition(f"connection_state cannot move from {current!r} to {new!r}")


_sequence = itertools.count(1)


def new_session_id(identity: str) -> str:
    """``session_<unix ms>_<identity>_<pid>.<n>``: unique across joins in the same millisecond
    (a process-wide sequence number) and across worker processes (the pid)."""
    return f"session_{int(time.time() * 1000)}_{identity}_{os.getpid()}.{next(_sequence)}"


@dataclass(kw_only=True, eq=False)
class ParticipantSession:
    """One participant's voice session (the seeds' ``AgentSession``)."""

    session_id: str
    participant_id: str
    """The participant's identity (stable across reconnects)."""
    participant_sid: str
    start_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    message_count: int = 0
    connection_state: ConnectionState = "connecting"
    reconnection_attempts: int = 0
    session_type: SessionType = "voice-vad"
    turns: deque[TurnMetrics] = field(default_factory=lambda: deque(maxlen=100), repr=False)
    """The most recent completed turns (newest last)."""
    history: list[HistoryMessage] = field(default_factory=list, repr=False)
    """Every user and assistant message of this session, in order."""
    earlier_messages: list[HistoryMessage] = field(default_factory=list, repr=False)
    """The participant's own messages of earlier sessions of the conversation, given to the
    LLM as context (loaded once, when its first pipeline starts)."""
    earlier_loaded: bool = field(default=False, repr=False)

    log: ContextLogger = field(repr=False)
    pipeline: VoicePipeline | None = field(default=None, repr=False)
    start_task: asyncio.Task[VoicePipeline] | None = field(default=None, repr=False)
    started: float = field(init=False, repr=False, default=0.0)
    """``start_time`` on the monotonic clock (cheap to compare: the health round reads
    every session's)."""

    def __post_init__(self) -> None:
        since = (datetime.now(UTC) - self.start_time).total_seconds()
        self.started = time.monotonic() - since

    @property
    def age_seconds(self) -> float:
        return time.monotonic() - self.started
