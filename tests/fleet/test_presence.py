"""AgentPresence in a fake room: the heartbeat, and one Clara per room."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from livekit import rtc
from livekit.agents.types import ATTRIBUTE_AGENT_NAME

from clara_voice.fleet import presence as presence_module
from clara_voice.fleet.presence import HEARTBEAT_ATTRIBUTE, AgentPresence
from clara_voice.logging import get_logger
from clara_voice.voice.attributes import AgentAttributes
from testkit.fakes import FakeRoom

DEAD_AFTER = 0.5
log = get_logger("test.presence")


class Outcome:
    """What the presence did: left (with why), or removed someone."""

    def __init__(self) -> None:
        self.left: list[str] = []
        self.removed: list[str] = []
        self.changed = asyncio.Event()

    def leave(self, reason: str) -> None:
        self.left.append(reason)
        self.changed.set()

    async def remove(self, identity: str) -> None:
        self.removed.append(identity)
        self.changed.set()


StartPresence = Callable[[FakeRoom], Awaitable[tuple[AgentPresence, Outcome]]]


@pytest.fixture
async def start_presence() -> AsyncIterator[StartPresence]:
    started: list[tuple[AgentPresence, AgentAttributes]] = []

    async def start(room: FakeRoom) -> tuple[AgentPresence, Outcome]:
        attributes = AgentAttributes(room, log=log)  # type: ignore[arg-type]
        attributes.start()
        outcome = Outcome()
        presence = AgentPresence(
            room,  # type: ignore[arg-type]
            attributes,
            agent_name="clara",
            dead_after=DEAD_AFTER,
            leave=outcome.leave,
            remove=outcome.remove,
            log=log,
        )
        presence.start()
        started.append((presence, attributes))
        return presence, outcome

    yield start
    for presence, attributes in started:
        await presence.aclose()
        await attributes.aclose()


def other_clara(room: FakeRoom, identity: str, *, joined_s_ago: float) -> rtc.RemoteParticipant:
    return room.join(
        identity,
        kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT,
        attributes={ATTRIBUTE_AGENT_NAME: "clara"},
        joined_at_ms=int((time.time() - joined_s_ago) * 1000),
    )


async def test_a_second_clara_leaves_when_the_first_one_is_alive(
    start_presence: StartPresence,
) -> None:
    """Regression: reading when an SDK participant joined raised AttributeError (the SDK's
    info has no ``joined_at_ms``), so the second Clara of a room crashed its job."""
    room = FakeRoom()
    other_clara(room, "agent-first", joined_s_ago=30)
    _, outcome = await start_presence(room)
    room.set_attributes("agent-first", {HEARTBEAT_ATTRIBUTE: "1"})
    await asyncio.wait_for(outcome.changed.wait(), 1)
    assert outcome.left == ["another Clara serves this room"] and outcome.removed == []


async def test_a_first_clara_whose_heartbeat_never_comes_is_removed(
    start_presence: StartPresence,
) -> None:
    room = FakeRoom()
    other_clara(room, "agent-first", joined_s_ago=30)
    _, outcome = await start_presence(room)
    await asyncio.wait_for(outcome.changed.wait(), DEAD_AFTER + 1)
    assert outcome.removed == ["agent-first"] and outcome.left == []


async def test_a_clara_that_joined_later_is_left_to_step_aside_on_its_own(
    start_presence: StartPresence,
) -> None:
    room = FakeRoom()
    _, outcome = await start_presence(room)
    other_clara(room, "agent-later", joined_s_ago=-5)  # joined after this one
    room.set_attributes("agent-later", {HEARTBEAT_ATTRIBUTE: "1"})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(outcome.changed.wait(), DEAD_AFTER + 0.5)
    assert outcome.left == [] and outcome.removed == []


class UnacknowledgedWrites(FakeRoom):
    """A room whose server does not acknowledge the agent's attribute updates (the SDK then
    waits, 5 s in livekit's), except for the heartbeat alone."""

    def __init__(self) -> None:
        super().__init__()
        self.heartbeats: list[str] = []
        self.beat_written = asyncio.Event()
        local = self.local_participant

        async def set_attributes(attributes: dict[str, str]) -> None:
            if set(attributes) == {HEARTBEAT_ATTRIBUTE}:
                self.heartbeats.append(attributes[HEARTBEAT_ATTRIBUTE])
                self.beat_written.set()
                return
            await asyncio.Event().wait()

        local.set_attributes = set_attributes  # type: ignore[method-assign]


async def test_the_heartbeat_goes_on_while_an_attribute_write_waits_for_the_server(
    start_presence: StartPresence, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (issue 17, multi-node): the heartbeat waited in line behind the agent's
    other attributes; LiveKit leaving one update unacknowledged for 5 s stopped it, and the
    fleet's watchers removed a live Clara from its call."""
    monkeypatch.setattr(presence_module, "HEARTBEAT_INTERVAL", 0.05)
    room = UnacknowledgedWrites()
    presence, _ = await start_presence(room)
    presence._attributes.set("clara.agent_state.ada", "listening")  # never acknowledged
    for _ in range(3):
        room.beat_written.clear()
        await asyncio.wait_for(room.beat_written.wait(), 1)
    assert len(set(room.heartbeats)) >= 2  # it moves
