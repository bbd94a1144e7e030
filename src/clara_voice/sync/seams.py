"""What session sync needs of the agent's sessions, and nothing more.

:class:`SyncSessions` is satisfied by the agent's ``SessionRegistry``: the sessions, a
lookup by identity, their events (``session_created``, ``connection_state_changed``), and
the one change sync may ask for, a session's type. :class:`SyncedSession` is what sync reads
of a session (``ParticipantSession`` has it). Sync never imports the agent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from clara_voice.logging import ContextLogger
from clara_voice.states import ConnectionState, SessionType
from clara_voice.voice.turns import EffectiveConfig


class RunningPipeline(Protocol):
    def effective(self) -> EffectiveConfig: ...


class SyncedSession(Protocol):
    """A participant's session as sync sees it."""

    @property
    def session_id(self) -> str: ...

    @property
    def participant_id(self) -> str: ...

    @property
    def session_type(self) -> SessionType: ...

    @property
    def connection_state(self) -> ConnectionState: ...

    @property
    def pipeline(self) -> RunningPipeline | None: ...

    @property
    def log(self) -> ContextLogger: ...


class SyncSessions(Protocol):
    """The sessions sync keeps in step with the room."""

    @property
    def sessions(self) -> Mapping[str, SyncedSession]: ...

    def of(self, identity: str) -> SyncedSession | None: ...

    def switch_type(self, session: Any, new: SessionType, *, source: str) -> None:
        """Switch ``session`` to ``new`` (raises when the pipeline cannot)."""
        ...

    def on(self, event: Any, callback: Callable[..., Any]) -> Any: ...

    def off(self, event: Any, callback: Callable[..., Any]) -> None: ...


__all__ = ["RunningPipeline", "SyncSessions", "SyncedSession"]
