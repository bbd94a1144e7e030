"""LiveKit's multi-node mode, the harness the fleet tests stand on: two livekit-server
nodes sharing a Redis server (testkit.livekit_server.LiveKitFleet), and one room reached
through both of them; and the harness's own lifecycle: a fleet leaves no process behind,
whether it stops or fails to start.

The room is placed on node B through the server API (``CreateRoom`` with a node id), so
that Alice, who connects through node A, is relayed there through Redis, while Bob
connects to node B directly; each sees the other and hears the other's microphone.
"""

from __future__ import annotations

import asyncio
import os
import socket

import numpy as np
import pytest
from livekit import api, rtc

from testkit.human import SOUND_RMS, Human
from testkit.livekit_server import LiveKitFleet
from tests.e2e.conftest import NewFleet

HEAR_TIMEOUT = 20.0


def _microphone_of(human: Human, identity: str) -> rtc.Track | None:
    """The audio track of ``identity`` that ``human`` is subscribed to, if any."""
    participant = human.room.remote_participants.get(identity)
    if participant is None:
        return None
    return next(
        (
            pub.track
            for pub in participant.track_publications.values()
            if pub.subscribed and pub.track is not None and pub.kind == rtc.TrackKind.KIND_AUDIO
        ),
        None,
    )


async def _hears_sound(track: rtc.Track) -> bool:
    """Whether a frame louder than silence arrives on ``track`` within the bound."""
    stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1)
    try:
        async with asyncio.timeout(HEAR_TIMEOUT):
            async for event in stream:
                samples = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
                if samples.size and np.sqrt(np.mean(samples**2)) / 32768.0 > SOUND_RMS:
                    return True
    except TimeoutError:
        return False
    finally:
        await stream.aclose()
    return False


async def test_clients_on_two_nodes_meet_in_one_room(
    livekit_fleet: LiveKitFleet, room_name: str
) -> None:
    node_a, node_b = livekit_fleet.nodes
    assert node_a.node_id and node_b.node_id and node_a.node_id != node_b.node_id
    assert livekit_fleet.registered_nodes() == {node_a.node_id, node_b.node_id}

    # the room lives on node B; node A only relays its clients' signalling
    lkapi = node_a.api()
    try:
        await lkapi.room.create_room(api.CreateRoomRequest(name=room_name, node_id=node_b.node_id))
    finally:
        await lkapi.aclose()
    assert livekit_fleet.room_node(room_name) == node_b.node_id

    alice = Human(node_a, room_name, "alice")
    bob = Human(node_b, room_name, "bob")
    try:
        await alice.join(wait_agent=False)
        await bob.join(wait_agent=False)
        # each sees the other, whichever node it came through
        await alice.wait_until(lambda: "bob" in alice.room.remote_participants, "bob shows up")
        await bob.wait_until(lambda: "alice" in bob.room.remote_participants, "alice shows up")
        # and media flows both ways through the room's node
        bob_mic = await alice.wait_until(lambda: _microphone_of(alice, "bob"), "bob's microphone")
        alice_mic = await bob.wait_until(lambda: _microphone_of(bob, "alice"), "alice's mic")
        bob.say("Hello Alice, this is Bob on the other node.")
        assert await _hears_sound(bob_mic), "alice heard nothing from bob"
        alice.say("Hello Bob, I hear you.")
        assert await _hears_sound(alice_mic), "bob heard nothing from alice"
        # the room never moved: one node served it, the other relayed
        assert livekit_fleet.room_node(room_name) == node_b.node_id
    finally:
        await alice.leave()
        await bob.leave()


# -- the harness leaves nothing behind ---------------------------------------------------


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_fleet_comes_up_registered_and_goes_down_entirely(new_fleet: NewFleet) -> None:
    fleet = new_fleet()
    try:
        node_a, node_b = fleet.nodes
        assert node_a.node_id and node_b.node_id and node_a.node_id != node_b.node_id
        assert fleet.registered_nodes() == {node_a.node_id, node_b.node_id}
        assert node_a.port != node_b.port
        assert node_a.api_secret == node_b.api_secret
        assert "using single-node routing" not in node_a.log_text()
        pids = [p for p in (fleet.redis.pid, node_a.pid, node_b.pid) if p is not None]
        assert len(pids) == 3
    finally:
        fleet.stop()
    assert all(_gone(pid) for pid in pids)
    fleet.stop()  # twice is fine


def test_a_node_that_cannot_start_takes_the_fleet_down(new_fleet: NewFleet) -> None:
    fleet = new_fleet(start=False)
    node_b = fleet.nodes[1]
    with socket.socket() as squatter:  # node B's signalling port is taken
        squatter.bind(("127.0.0.1", node_b.port))
        squatter.listen()
        with pytest.raises(RuntimeError, match="livekit-server exited"):
            fleet.start()
        pids = [fleet.redis.pid, fleet.nodes[0].pid, node_b.pid]
    assert pids == [None, None, None]
    assert fleet.redis.log_path.is_file()  # it was started, then stopped
