"""RoomSurface: what the sessions of one room share of it, each with a single owner.

Everything the agent shows the room or takes from it that is room-wide in LiveKit goes
through one owner per room, never one per session (two writers of the same thing, each
with its own bookkeeping, is how state drifts):

- ``attributes``: the agent's participant attributes (:class:`AgentAttributes`), written by
  session sync (each session's config) and ``states``;
- ``states``: each conversation's state and ``lk.agent.state`` (:class:`AgentStates`);
- ``grants``: the agent's track subscription permissions (:class:`TrackGrants`);
- ``streams``: the room's text and byte stream handlers, by sender (:class:`StreamDispatch`);
- ``notices``: ``clara.notice`` refusals to one participant, and the rate-limited log of
  refusals (:class:`Notices`).

The room job's agent makes it, starts it before its sessions and closes it after them.
"""

from __future__ import annotations

from collections.abc import Callable

from livekit import rtc

from clara_voice.logging import ContextLogger
from clara_voice.voice.agent_state import AgentStates
from clara_voice.voice.attributes import AgentAttributes
from clara_voice.voice.grants import TrackGrants
from clara_voice.voice.notices import Notices
from clara_voice.voice.streams import StreamDispatch


class RoomSurface:
    """The room-wide owners of one room job; see the module docstring."""

    def __init__(
        self,
        room: rtc.Room,
        *,
        log: ContextLogger,
        attribute_interval: float = 0.5,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.room = room
        self.log = log
        self.attributes = AgentAttributes(
            room, log=log, interval=attribute_interval, on_error=on_error
        )
        self.states = AgentStates(self.attributes)
        self.grants = TrackGrants(room)
        self.notices = Notices(room, log)
        self.streams = StreamDispatch(room, refusals=self.notices.refusals)
        self._started = False

    def start(self) -> None:
        """Start writing attributes and following the agent's tracks; idempotent."""
        self._started = True
        self.attributes.start()
        self.grants.start()

    async def aclose(self) -> None:
        """Close the streams, stop following the room and writing; safe to call twice."""
        self.streams.close()
        self.grants.close()
        await self.notices.aclose()
        await self.attributes.aclose()


__all__ = ["RoomSurface"]
