"""RoomWatcher: every room with a person in it has a live Clara (issue 17, item 2).

OSS LiveKit offers a room's job once and never again: a room whose job every worker
declined, whose job failed to start, or whose agent's worker crashed stays without Clara
for good (LiveKit Cloud's restart policy is Cloud's own). Each clara worker therefore
watches the server's rooms, every ``CLARA_ROOM_WATCH_INTERVAL`` seconds, through its API:

- a room with at least one person (a standard, SIP or connector participant) that joined
  more than ``JOIN_GRACE`` seconds ago (its own dispatch is usually still starting) and no
  live Clara agent gets one, through LiveKit's dispatch API (``CreateDispatch`` with
  ``CLARA_AGENT_NAME``). A dispatch no worker took (every one full or draining: LiveKit
  lists no job for it) is made again after ``NO_TAKER_AFTER`` seconds, then twice as long
  each time up to ``DISPATCH_GRACE``; one a worker took has ``DISPATCH_GRACE`` seconds to
  bring its Clara in;
- a Clara agent is live while its heartbeat (``clara.heartbeat``, see
  :mod:`clara_voice.fleet.presence`) changes; one whose heartbeat stood still for
  ``CLARA_AGENT_DEAD_AFTER`` seconds, by this watcher's own clock, is dead: it is removed
  from the room (``RemoveParticipant``) instead of waiting for LiveKit to time it out, and
  the room gets a new one.

Two watchers may dispatch for the same room at once; the second Clara sees the first's
heartbeat and leaves (presence.py). Every dispatch and removal is logged with its room
and counted (``clara_rooms_healed_total``). A failing round is logged once per streak,
and the next one runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from livekit import api, rtc
from livekit.agents.utils import aio

from clara_voice import telemetry
from clara_voice.fleet.presence import HEARTBEAT_ATTRIBUTE, is_clara, joined_ms
from clara_voice.logging import ContextLogger

JOIN_GRACE = 3.0
"""Seconds a person is in a room before the watcher gives it a Clara of its own."""
DISPATCH_GRACE = 10.0
"""Seconds a worker that took the room's dispatch has to bring its Clara in."""
NO_TAKER_AFTER = 2.0
"""Seconds after a dispatch before a dispatch no worker took is made again (then twice as
long each time, up to ``DISPATCH_GRACE``): every worker was full or draining."""
API_TIMEOUT = 5.0
"""Bound on each call to the server's API."""

T = TypeVar("T")

PEOPLE: frozenset[int] = frozenset(
    {
        rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
        rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
        rtc.ParticipantKind.PARTICIPANT_KIND_CONNECTOR,
    }
)


@dataclass
class _Dispatch:
    at: float
    """When this watcher made it (its monotonic clock)."""
    id: str
    attempts: int
    """Dispatches made for the room in a row, no Clara coming."""

    @property
    def wait(self) -> float:
        """Seconds before the next look at whether a worker took it."""
        return min(NO_TAKER_AFTER * 2.0 ** (self.attempts - 1), DISPATCH_GRACE)


@dataclass
class _Beat:
    value: str
    changed_at: float
    """When this watcher last saw the heartbeat change (its monotonic clock)."""


class RoomWatcher:
    """One worker's watch over the server's rooms; see the module docstring."""

    def __init__(
        self,
        lkapi: api.LiveKitAPI,
        *,
        agent_name: str,
        interval: float,
        dead_after: float,
        log: ContextLogger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = lkapi
        self._clock = clock
        self._agent_name = agent_name
        self._interval = interval
        self._dead_after = dead_after
        self._log = log
        self._beats: dict[tuple[str, str], _Beat] = {}
        self._dispatched: dict[str, _Dispatch] = {}
        self.rounds = 0

    async def run(self) -> None:
        """Watch until cancelled."""
        ticker = aio.interval(self._interval)
        failing = False
        while True:
            await ticker.tick()
            try:
                await self.round()
            except (api.TwirpError, aiohttp.ClientError, TimeoutError) as exc:
                if not failing:  # the server's answer, or none: said once per streak
                    self._log.warning(
                        "could not watch the rooms",
                        extra={"error": f"{type(exc).__name__}: {exc}"[:300]},
                    )
                failing = True
            except Exception as exc:
                if not failing:
                    self._log.error("could not watch the rooms", exc_info=exc)
                failing = True
            else:
                if failing:
                    self._log.info("watching the rooms again")
                failing = False

    async def round(self) -> None:
        """One look at every room."""
        rooms = await self._call(self._api.room.list_rooms(api.ListRoomsRequest()))
        seen: set[tuple[str, str]] = set()
        waiting: set[str] = set()
        for room in rooms.rooms:
            if room.num_participants == 0:
                continue
            listed = await self._call(
                self._api.room.list_participants(api.ListParticipantsRequest(room=room.name))
            )
            # when the room was seen as it is listed: the rooms are listed one after
            # another, and a busy server makes a round last seconds
            now = self._clock()
            if await self._look(room.name, listed.participants, now, seen):
                waiting.add(room.name)
        for key in set(self._beats) - seen:  # agents (or rooms) gone: forget them
            del self._beats[key]
        for name in set(self._dispatched) - waiting:  # its Clara came, or the room went
            del self._dispatched[name]
        self.rounds += 1

    async def _look(
        self,
        room: str,
        participants: Iterable[api.ParticipantInfo],
        now: float,
        seen: set[tuple[str, str]],
    ) -> bool:
        """Heal ``room`` if it needs it; whether it waits for a Clara."""
        people = [p for p in participants if int(p.kind) in PEOPLE]
        claras = [p for p in participants if is_clara(p, self._agent_name)]
        live: list[api.ParticipantInfo] = []
        dead: list[api.ParticipantInfo] = []
        for clara in claras:
            key = (room, clara.identity)
            seen.add(key)
            (live if self._alive(key, clara, now) else dead).append(clara)
        if not people or live:
            return False
        for clara in dead:
            self._log.warning(
                "Clara agent dead (no heartbeat), removing it",
                extra={"room": room, "agent": clara.identity, "dead_after_s": self._dead_after},
            )
            await self._remove(room, clara.identity)
            telemetry.ROOMS_HEALED.labels(action="removed").inc()
        waited = time.time() - min(joined_ms(p) for p in people) / 1000
        if waited < JOIN_GRACE:
            return False  # its own dispatch is usually still starting
        last = self._dispatched.get(room)
        if last is not None:
            if now - last.at < last.wait:
                return True
            if now - last.at < DISPATCH_GRACE and await self._taken(room, last.id):
                return True  # a worker took it: its Clara is on the way
            await self._forget(room, last.id)
        made = await self._call(
            self._api.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(room=room, agent_name=self._agent_name)
            )
        )
        attempts = last.attempts + 1 if last is not None else 1
        self._dispatched[room] = _Dispatch(now, made.id, attempts)
        telemetry.ROOMS_HEALED.labels(action="dispatched").inc()
        extra = {"room": room, "people": len(people), "dead_agents": len(dead)}
        if last is None:
            self._log.warning("room without a live Clara, dispatched one", extra=extra)
        else:  # every worker full or draining, or the one that took it lost it
            self._log.info(
                "room still without a live Clara, dispatched again",
                extra={**extra, "attempt": attempts},
            )
        return True

    async def _taken(self, room: str, dispatch_id: str) -> bool:
        """Whether a worker took the dispatch (LiveKit lists the jobs it gave out)."""
        dispatches = await self._call(self._api.agent_dispatch.list_dispatch(room))
        return any(d.id == dispatch_id and d.state.jobs for d in dispatches)

    async def _forget(self, room: str, dispatch_id: str) -> None:
        """Delete a dispatch that brought no Clara (best effort: it only clutters the list)."""
        with contextlib.suppress(api.TwirpError, aiohttp.ClientError, TimeoutError):
            await self._call(self._api.agent_dispatch.delete_dispatch(dispatch_id, room))

    def _alive(self, key: tuple[str, str], clara: api.ParticipantInfo, now: float) -> bool:
        value = clara.attributes.get(HEARTBEAT_ATTRIBUTE, "")
        beat = self._beats.get(key)
        if beat is None or beat.value != value:
            self._beats[key] = beat = _Beat(value, now)
        return now - beat.changed_at < self._dead_after

    async def _call(self, request: Awaitable[T]) -> T:
        async with asyncio.timeout(API_TIMEOUT):
            return await request

    async def _remove(self, room: str, identity: str) -> None:
        try:
            await self._call(
                self._api.room.remove_participant(
                    api.RoomParticipantIdentity(room=room, identity=identity)
                )
            )
        except api.TwirpError as exc:
            if exc.code != api.TwirpErrorCode.NOT_FOUND:
                raise  # gone already: it left on its own, or another watcher removed it


__all__ = ["API_TIMEOUT", "DISPATCH_GRACE", "JOIN_GRACE", "NO_TAKER_AFTER", "RoomWatcher"]
