"""Seed 000 end to end: a real client joins and leaves a room on the real server, and the
real worker makes and ends its session."""

from __future__ import annotations

from testkit.checks import event, joined, wait_gauge
from testkit.human import Human
from testkit.livekit_server import LiveKitServer
from tests.e2e.conftest import StartClara


async def test_a_joining_client_gets_a_session_and_leaving_cleans_it_up(
    livekit_server: LiveKitServer, clara: StartClara, room_name: str
) -> None:
    worker = await clara()
    alice = Human(livekit_server, room_name, "alice")
    await alice.join()

    await worker.wait_line(event("participant joined", participant="alice"), "participant joined")
    await worker.wait_line(event("session initialized", participant="alice"), "session ready")
    await wait_gauge(worker, "clara_active_sessions", 1)

    await alice.leave()
    await worker.wait_line(event("cleaning up session", participant="alice"), "the cleanup")
    await wait_gauge(worker, "clara_active_sessions", 0)


async def test_a_room_over_its_session_cap_tells_the_extra_participant_and_serves_it_next(
    livekit_server: LiveKitServer, clara: StartClara, room_name: str
) -> None:
    """Regression (issue 16, item 3): every participant got a whole pipeline, however many
    joined one room."""
    worker = await clara(CLARA_MAX_SESSIONS_PER_ROOM="2")
    alice, bob = Human(livekit_server, room_name, "alice"), Human(livekit_server, room_name, "bob")
    await joined(worker, alice, bob)
    carol = Human(livekit_server, room_name, "carol")
    await carol.join()

    notice = await carol.wait_until(lambda: carol.notices and carol.notices[0], "the notice")
    assert (notice["type"], notice["input"], notice["error"]) == ("refused", "session", "room_full")
    assert not alice.notices and not bob.notices
    assert not worker.find(event("participant joined", participant="carol"))
    await worker.wait_line(event("session refused: the room is full", participant="carol"), "log")

    await alice.leave()  # a place frees up: carol gets it
    await worker.wait_line(event("session initialized", participant="carol"), "carol's session")
    await carol.wait_until(carol.session_config, "carol's session config")
    await bob.leave()
    await carol.leave()
