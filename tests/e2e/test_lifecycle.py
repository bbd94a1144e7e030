"""Seed 000 end to end: a real client joins and leaves a room on the real server, and the
real worker makes and ends its session."""

from __future__ import annotations

from testkit.checks import event, wait_gauge
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
