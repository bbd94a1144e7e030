"""AgentPresence in a fake room: the heartbeat, and one Clara per room."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from livekit import rtc
from livekit.agents.types import ATTRIBUTE_AGENT_NAME

from clara_voice.fleet import presence as presence_module
from clara_voice.fleet.presence import HEARTBEAT_ATTRIBUTE, AgentPresence
from clara_voice.logging import get_logger
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


StartPresence = Callable[..., Awaitable[tuple[AgentPresence, Outcome]]]


class Beats:
    """The heartbeats a presence sent (from its own thread)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, attributes: dict[str, str]) -> None:
        with self._lock:
            self.sent.append(attributes[HEARTBEAT_ATTRIBUTE])

    def count(self) -> int:
        with self._lock:
            return len(self.sent)


@pytest.fixture
async def start_presence() -> AsyncIterator[StartPresence]:
    started: list[AgentPresence] = []

    async def start(room: FakeRoom, beats: Beats | None = None) -> tuple[AgentPresence, Outcome]:
        outcome = Outcome()
        presence = AgentPresence(
            room,  # type: ignore[arg-type]
            agent_name="clara",
            dead_after=DEAD_AFTER,
            leave=outcome.leave,
            remove=outcome.remove,
            log=log,
            send=beats or Beats(),
        )
        presence.start()
        started.append(presence)
        return presence, outcome

    yield start
    for presence in started:
        await presence.aclose()


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


async def test_the_heartbeat_goes_on_while_the_jobs_event_loop_is_held_up(
    start_presence: StartPresence, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (issue 17, a machine over its capacity): the heartbeat was written on the
    job's event loop and waited for LiveKit's acknowledgement; job loops blocked for
    seconds, or an acknowledgement that never came, stopped it, and the fleet's watchers
    removed live Claras from their calls."""
    monkeypatch.setattr(presence_module, "HEARTBEAT_INTERVAL", 0.05)
    beats = Beats()
    presence, _ = await start_presence(FakeRoom(), beats)
    time.sleep(0.5)  # noqa: ASYNC251 -- the loop held up (a blocking call, a starved process)
    assert beats.count() >= 5
    await presence.aclose()
    assert not [t for t in threading.enumerate() if t.name == "clara.heartbeat"]  # no leak
