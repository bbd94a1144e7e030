"""AgentPresence: a room job's Clara says it is alive, and steps aside for a live one.

Every ``HEARTBEAT_INTERVAL`` seconds the agent writes its heartbeat, the agent attribute
``clara.heartbeat`` (unix ms), from a thread of its own straight to livekit's native
client (``agent/_livekit_ffi.send_attributes``), each beat its own request, never waiting
for LiveKit's acknowledgement: the heartbeat says that the job's *process* is alive. It
used to go through the room's attribute writer on the event loop, and stopped whenever the
loop was held up (a machine over its capacity blocked job loops for seconds) or an
acknowledgement did not come (LiveKit leaves one now and then for 5 s); watchers then
removed live Claras from their calls, adding load to a machine that had none to spare.
Whether the agent is *well* is the worker's health check, not the fleet's business.

The room watchers of the fleet (:mod:`clara_voice.fleet.watcher`) and the page read it: an
agent whose heartbeat stopped changing for ``CLARA_AGENT_DEAD_AFTER`` seconds is dead (its worker
crashed) even while LiveKit still lists it, which it does for about 20 s.

There is one Clara per room. When another Clara agent (kind AGENT, the same
``lk.agent.name``) is in the room and joined before this one, this one is the second (two
watchers dispatched at once, or the first was thought dead): if the other's heartbeat
moves, this job leaves at once; if it does not move within ``dead_after`` seconds, the
other is dead, and this job removes it from the room (through the server API) and stays.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from livekit import api, rtc
from livekit.agents.types import ATTRIBUTE_AGENT_NAME
from livekit.agents.utils import aio

from clara_voice.agent._livekit_ffi import send_attributes
from clara_voice.logging import ContextLogger

HEARTBEAT_ATTRIBUTE = "clara.heartbeat"
HEARTBEAT_INTERVAL = 1.0
"""Seconds between an agent's heartbeats."""


def is_clara(participant: Any, agent_name: str) -> bool:
    """Whether ``participant`` (rtc or API participant info) is a Clara agent of that name."""
    kind = participant.kind
    return bool(
        kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        and participant.attributes.get(ATTRIBUTE_AGENT_NAME, "") == agent_name
    )


def joined_ms(participant: Any) -> int:
    """When ``participant`` joined, in ms since the epoch (now, when nobody has said): the
    server API's ``ParticipantInfo`` carries ``joined_at_ms``, the SDK's participants (this
    job's view of the room) a ``joined_at`` datetime."""
    if isinstance(participant, api.ParticipantInfo):
        ms = participant.joined_at_ms or participant.joined_at * 1000
    else:
        at = participant.joined_at
        ms = at.timestamp() * 1000 if at is not None else 0
    return int(ms or time.time() * 1000)


class AgentPresence:
    """This job's heartbeat, and the rule of one Clara per room; see the module."""

    def __init__(
        self,
        room: rtc.Room,
        *,
        agent_name: str,
        dead_after: float,
        leave: Callable[[str], None],
        remove: Callable[[str], Awaitable[None]],
        log: ContextLogger,
        send: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        """``send``: writes attributes from the heartbeat's thread (default: livekit's native
        client, as the room's local participant)."""
        self._room = room
        self._send = send or partial(send_attributes, room.local_participant)
        self._agent_name = agent_name
        self._dead_after = dead_after
        self._leave = leave
        self._remove = remove
        self._log = log
        self._stop_beating = threading.Event()
        self._beating: threading.Thread | None = None
        self._checks: dict[str, asyncio.Task[None]] = {}
        self._beats: dict[str, asyncio.Event] = {}
        self._left = False
        self._started = False

    def start(self) -> None:
        """Beat, and look at the Clara agents already in the room; idempotent."""
        if self._started:
            return
        self._started = True
        self._room.on("participant_connected", self._on_connected)
        self._room.on("participant_attributes_changed", self._on_attributes)
        self._room.on("participant_disconnected", self._on_disconnected)
        self._stop_beating.clear()
        self._beating = threading.Thread(target=self._beat, name="clara.heartbeat", daemon=True)
        self._beating.start()
        for participant in list(self._room.remote_participants.values()):
            self._on_connected(participant)

    async def aclose(self) -> None:
        """Stop beating and watching; safe to call twice."""
        if self._started:
            self._started = False
            self._room.off("participant_connected", self._on_connected)
            self._room.off("participant_attributes_changed", self._on_attributes)
            self._room.off("participant_disconnected", self._on_disconnected)
        self._stop_beating.set()
        if self._beating is not None:
            await asyncio.to_thread(self._beating.join, HEARTBEAT_INTERVAL + 1)
            self._beating = None
        tasks = list(self._checks.values())
        self._checks.clear()
        await aio.cancel_and_wait(*tasks)

    def _beat(self) -> None:
        """The heartbeat's thread: a beat now, then every ``HEARTBEAT_INTERVAL`` seconds."""
        failing = False
        while True:
            try:
                self._send({HEARTBEAT_ATTRIBUTE: str(int(time.time() * 1000))})
            except Exception as exc:
                if not failing:  # said once per streak
                    self._log.warning("could not send the heartbeat", exc_info=exc)
                failing = True
            else:
                failing = False
            if self._stop_beating.wait(HEARTBEAT_INTERVAL):
                return

    def _older(self, other: rtc.Participant) -> bool:
        """Whether ``other`` came first (the one that stays when both are alive)."""
        me = self._room.local_participant
        return (joined_ms(other), other.identity) < (joined_ms(me), me.identity)

    def _on_connected(self, participant: rtc.RemoteParticipant) -> None:
        if not is_clara(participant, self._agent_name) or participant.identity in self._checks:
            return
        if not self._older(participant):
            return  # the newcomer checks us and steps aside
        self._beats[participant.identity] = asyncio.Event()
        self._checks[participant.identity] = asyncio.create_task(
            self._check(participant.identity), name=f"clara.rival.{participant.identity}"
        )

    def _on_attributes(self, changed: dict[str, str], participant: rtc.Participant) -> None:
        if HEARTBEAT_ATTRIBUTE in changed and (beat := self._beats.get(participant.identity)):
            beat.set()

    def _on_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if (check := self._checks.pop(participant.identity, None)) is not None:
            check.cancel()
        self._beats.pop(participant.identity, None)

    async def _check(self, identity: str) -> None:
        beat = self._beats[identity]
        try:
            async with asyncio.timeout(self._dead_after):
                await beat.wait()
        except TimeoutError:
            self._log.warning(
                "the Clara agent before this one is dead, removing it", extra={"other": identity}
            )
            try:
                await self._remove(identity)
            except Exception as exc:
                self._log.warning("could not remove the dead agent", exc_info=exc)
            return
        finally:
            self._checks.pop(identity, None)
            self._beats.pop(identity, None)
        if not self._left:
            self._left = True
            self._log.info(
                "another Clara serves this room, this one leaves", extra={"other": identity}
            )
            self._leave("another Clara serves this room")


__all__ = ["HEARTBEAT_ATTRIBUTE", "HEARTBEAT_INTERVAL", "AgentPresence", "is_clara", "joined_ms"]
