"""RoomWatcher's rounds against a fake of the server API: which rooms get a Clara, which
Clara is dead. The real server's side is tests/e2e/test_fleet.py."""

from __future__ import annotations

import time
from typing import Any

import pytest
from livekit import api, rtc
from livekit.agents.types import ATTRIBUTE_AGENT_NAME

from clara_voice.fleet.presence import HEARTBEAT_ATTRIBUTE
from clara_voice.fleet.watcher import DISPATCH_GRACE, JOIN_GRACE, RoomWatcher
from clara_voice.logging import get_logger

DEAD_AFTER = 4.0


class FakeRoomService:
    def __init__(self) -> None:
        self.rooms: dict[str, list[api.ParticipantInfo]] = {}
        self.removed: list[tuple[str, str]] = []

    async def list_rooms(self, _: api.ListRoomsRequest) -> api.ListRoomsResponse:
        rooms = [api.Room(name=n, num_participants=len(ps)) for n, ps in self.rooms.items()]
        return api.ListRoomsResponse(rooms=rooms)

    async def list_participants(self, req: api.ListParticipantsRequest) -> Any:
        return api.ListParticipantsResponse(participants=self.rooms[req.room])

    async def remove_participant(self, req: api.RoomParticipantIdentity) -> None:
        self.removed.append((req.room, req.identity))
        self.rooms[req.room] = [p for p in self.rooms[req.room] if p.identity != req.identity]


class FakeDispatchService:
    """LiveKit's dispatches; ``taken``: whether a worker takes the ones made (LiveKit lists
    a job for a dispatch a worker took, none when every worker was full)."""

    def __init__(self) -> None:
        self.dispatched: list[tuple[str, str]] = []
        self.made: dict[str, api.AgentDispatch] = {}
        self.deleted: list[str] = []
        self.taken = True

    async def create_dispatch(self, req: api.CreateAgentDispatchRequest) -> api.AgentDispatch:
        made = api.AgentDispatch(id=f"AD_{len(self.dispatched)}", room=req.room)
        self.dispatched.append((req.room, req.agent_name))
        if self.taken:
            made.state.jobs.add(id=f"AJ_{len(self.dispatched)}")
        self.made[made.id] = made
        return made

    async def list_dispatch(self, room_name: str) -> list[api.AgentDispatch]:
        return [d for d in self.made.values() if d.room == room_name]

    async def delete_dispatch(self, dispatch_id: str, room_name: str) -> api.AgentDispatch:
        self.deleted.append(dispatch_id)
        return self.made.pop(dispatch_id)


class FakeAPI:
    def __init__(self) -> None:
        self.room = FakeRoomService()
        self.agent_dispatch = FakeDispatchService()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def person(identity: str, *, joined_s_ago: float) -> api.ParticipantInfo:
    return api.ParticipantInfo(
        identity=identity,
        kind=api.ParticipantInfo.Kind.STANDARD,
        joined_at_ms=int((time.time() - joined_s_ago) * 1000),
    )


def clara(identity: str, heartbeat: str, *, name: str = "clara") -> api.ParticipantInfo:
    return api.ParticipantInfo(
        identity=identity,
        kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT,  # type: ignore[arg-type]
        attributes={ATTRIBUTE_AGENT_NAME: name, HEARTBEAT_ATTRIBUTE: heartbeat},
        joined_at_ms=int(time.time() * 1000),
    )


@pytest.fixture
def lkapi() -> FakeAPI:
    return FakeAPI()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def watcher(lkapi: FakeAPI, clock: Clock) -> RoomWatcher:
    return RoomWatcher(
        lkapi,  # type: ignore[arg-type]
        agent_name="clara",
        interval=1.0,
        dead_after=DEAD_AFTER,
        log=get_logger("test.watcher"),
        clock=clock,
    )


async def test_a_room_with_a_person_and_no_clara_gets_one_dispatch(
    watcher: RoomWatcher, lkapi: FakeAPI, clock: Clock
) -> None:
    lkapi.room.rooms = {"call": [person("ada", joined_s_ago=JOIN_GRACE + 1)], "empty": []}
    await watcher.round()
    assert lkapi.agent_dispatch.dispatched == [("call", "clara")]
    clock.now += 1
    await watcher.round()  # its Clara is still starting: not dispatched twice
    assert len(lkapi.agent_dispatch.dispatched) == 1


async def test_a_dispatch_no_worker_took_is_made_again_backing_off(
    watcher: RoomWatcher, lkapi: FakeAPI, clock: Clock
) -> None:
    """Every worker full (a burst of rooms): LiveKit offers the job once and lists no job
    for the dispatch; the room is dispatched again after 2 s, then 4, 8, at most 10."""
    lkapi.agent_dispatch.taken = False
    lkapi.room.rooms = {"call": [person("ada", joined_s_ago=JOIN_GRACE + 1)]}
    made_at = []
    for second in range(30):
        before = len(lkapi.agent_dispatch.dispatched)
        await watcher.round()
        if len(lkapi.agent_dispatch.dispatched) > before:
            made_at.append(second)
        clock.now += 1
    assert made_at == [0, 2, 6, 14, 24]
    assert lkapi.agent_dispatch.deleted == ["AD_0", "AD_1", "AD_2", "AD_3"]


async def test_a_dispatch_a_worker_took_has_its_grace_to_bring_clara(
    watcher: RoomWatcher, lkapi: FakeAPI, clock: Clock
) -> None:
    lkapi.room.rooms = {"call": [person("ada", joined_s_ago=JOIN_GRACE + 1)]}
    for _ in range(int(DISPATCH_GRACE)):
        await watcher.round()
        clock.now += 1
    assert len(lkapi.agent_dispatch.dispatched) == 1  # its Clara is still on the way
    await watcher.round()  # it never came (its job failed to start): again
    assert len(lkapi.agent_dispatch.dispatched) == 2


async def test_a_person_who_just_joined_is_left_to_the_rooms_own_dispatch(
    watcher: RoomWatcher, lkapi: FakeAPI
) -> None:
    lkapi.room.rooms = {"call": [person("ada", joined_s_ago=0.5)]}
    await watcher.round()
    assert lkapi.agent_dispatch.dispatched == []


async def test_a_clara_whose_heartbeat_moves_is_live_and_one_that_stops_is_replaced(
    watcher: RoomWatcher, lkapi: FakeAPI, clock: Clock
) -> None:
    ada = person("ada", joined_s_ago=60)
    for beat in range(10):  # ten seconds of heartbeats, one a second
        lkapi.room.rooms = {"call": [ada, clara("agent-1", str(beat))]}
        await watcher.round()
        clock.now += 1
    assert lkapi.room.removed == [] and lkapi.agent_dispatch.dispatched == []

    for _ in range(int(DEAD_AFTER) - 1):  # its worker crashed: the heartbeat stands still
        await watcher.round()
        clock.now += 1
    assert lkapi.room.removed == []  # not yet: still within CLARA_AGENT_DEAD_AFTER
    await watcher.round()  # still for CLARA_AGENT_DEAD_AFTER seconds
    assert lkapi.room.removed == [("call", "agent-1")]
    assert lkapi.agent_dispatch.dispatched == [("call", "clara")]


async def test_a_round_slowed_by_a_busy_server_does_not_make_a_new_clara_look_dead(
    watcher: RoomWatcher, lkapi: FakeAPI, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (issue 17, 20 rooms at once on 2 cores): a heartbeat's age counted from
    the start of the round, though the rooms are listed one after another; on a busy
    server a round took seconds, so a Clara first listed late in a slow round looked to
    have stood still since its start, and a starting Clara was removed as dead."""
    listed = lkapi.room.list_participants
    slow = {"busy": 5.0}  # the server takes 5 s to list this room, once

    async def list_participants(req: api.ListParticipantsRequest) -> Any:
        clock.now += slow.pop(req.room, 0.0)
        return await listed(req)

    monkeypatch.setattr(lkapi.room, "list_participants", list_participants)
    lkapi.room.rooms = {
        "busy": [person("bo", joined_s_ago=60), clara("agent-0", "1")],
        "call": [person("ada", joined_s_ago=60), clara("agent-1", "1")],  # it just joined
    }
    await watcher.round()
    clock.now += 1
    await watcher.round()  # a second later: one beat missed, nothing more
    assert lkapi.room.removed == []


async def test_another_agent_or_a_room_of_agents_alone_is_not_claras_business(
    watcher: RoomWatcher, lkapi: FakeAPI, clock: Clock
) -> None:
    lkapi.room.rooms = {
        "other": [person("ada", joined_s_ago=60), clara("agent-x", "1", name="translator")],
        "alone": [clara("agent-2", "1")],
    }
    for _ in range(int(DEAD_AFTER) + 2):
        await watcher.round()
        clock.now += 1
    assert lkapi.agent_dispatch.dispatched == [("other", "clara")]  # no Clara of its name
    assert lkapi.room.removed == []  # nobody to serve in "alone": left to LiveKit
