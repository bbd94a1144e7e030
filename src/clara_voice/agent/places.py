"""SessionPlaces: at most ``CLARA_MAX_SESSIONS_PER_ROOM`` sessions in one room.

Every session is a whole pipeline (an AgentSession, its STT stream, its audio track), so a
room cannot grow them without bound: a participant who joins a room whose places are all
taken gets no pipeline. It is told so, once per wait, with a ``clara.notice`` addressed to
it only::

    {"v": 1, "type": "refused", "input": "session", "error": "room_full", "message": "…"}

and waits, in the order of arrival: when a session of the room ends, the first waiting
participant still in the room gets the free place. A session waiting out its grace period
(a dropped participant) keeps its place.
"""

from __future__ import annotations

from collections import OrderedDict

from clara_voice.voice.notices import Notices

ROOM_FULL_CODE = "room_full"
MAX_WAITING = 1024
"""Participants kept waiting (the earliest ones); later ones are refused all the same."""


def room_full_message(limit: int) -> str:
    return (
        f"Clara is already talking with {limit} people in this room; "
        "you will get your session as soon as a place frees up."
    )


class SessionPlaces:
    """Who gets a session in a room of at most ``limit``, and who waits for one."""

    def __init__(self, *, limit: int, notices: Notices) -> None:
        self.limit = limit
        self._notices = notices
        self._waiting: OrderedDict[str, str] = OrderedDict()
        """Identity → the sid of the connection that waits."""

    @property
    def waiting(self) -> list[str]:
        """The identities waiting for a place, first come first."""
        return list(self._waiting)

    def admit(self, identity: str, sid: str, *, taken: int) -> bool:
        """Whether ``identity`` gets a session now that ``taken`` places are taken; if
        not, it waits (and is told, once per wait)."""
        if taken < self.limit:
            self._waiting.pop(identity, None)
            return True
        if self._waiting.get(identity) != sid:
            if identity not in self._waiting and len(self._waiting) >= MAX_WAITING:
                self._waiting.popitem(last=False)
            self._waiting[identity] = sid
            self._notices.refusals.refused(
                "session refused: the room is full", participant=identity, limit=self.limit
            )
            self._notices.refuse(
                identity,
                input="session",
                error=ROOM_FULL_CODE,
                message=room_full_message(self.limit),
            )
        return False

    def left(self, identity: str, sid: str) -> None:
        """``identity``'s connection ``sid`` left the room: it no longer waits."""
        if self._waiting.get(identity) == sid:
            del self._waiting[identity]

    def next_waiting(self) -> tuple[str, str] | None:
        """The first waiting participant (identity, sid), taken off the list."""
        if not self._waiting:
            return None
        return self._waiting.popitem(last=False)


__all__ = ["MAX_WAITING", "ROOM_FULL_CODE", "SessionPlaces", "room_full_message"]
