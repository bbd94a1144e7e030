"""Stopping the worker with live conversations: nothing is lost, every client is told."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from testkit.checks import joined, store_rows, talk
from testkit.human import Human
from testkit.livekit_server import LiveKitServer
from tests.e2e.conftest import Providers, StartClara

DRAIN = 1.0
JOB_SHUTDOWN = 15.0


def ended(human: Human) -> bool:
    return any(
        e["payload"]["config"]["state"] == "ending"
        and e["payload"]["participant"] == human.identity
        for e in human.sync_events
    )


async def test_sigterm_mid_conversation_persists_every_summary_and_tells_every_client(
    livekit_server: LiveKitServer,
    clara: StartClara,
    room_name: str,
    providers: Providers,
    tmp_path: Path,
) -> None:
    """Regression: livekit closes the room before the job's shutdown callbacks run, and the
    room's disconnect used to start cleanups that the agent's close then cancelled, so a
    normal shutdown persisted no summary and sent no ``ending`` event."""
    providers.openai.replies = ["First answer.", "Second answer.", "A long answer " * 20]
    worker = await clara(
        CLARA_DRAIN_TIMEOUT=str(int(DRAIN)), CLARA_JOB_SHUTDOWN_TIMEOUT=str(JOB_SHUTDOWN)
    )
    alice = Human(livekit_server, room_name, "alice")
    bob = Human(livekit_server, room_name, "bob")
    await joined(worker, alice, bob)
    await talk(alice, "Hello there", "First answer.")
    await talk(bob, "Hi Clara", "Second answer.")
    # Alice asks again; her long answer is being spoken when the worker is told to stop
    asked = alice.say("Tell me a story")
    await alice.wait_until(asked.ended.is_set, "the question was sent")
    await alice.wait_until(lambda: alice.agent_sound_after(asked.ended_at or 0.0), "the answer")

    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    code = await worker.wait_exit(DRAIN + JOB_SHUTDOWN + 10)
    took = time.monotonic() - started
    print(f"\nSIGTERM -> exit: {took:.1f} s")

    assert code == 0, worker.tail()
    assert took < DRAIN + JOB_SHUTDOWN, worker.tail()
    for human in (alice, bob):
        await human.wait_until(lambda h=human: ended(h), "its final ending event", timeout=5)  # type: ignore[misc]
    rows = store_rows(tmp_path / "data", "SELECT participant FROM sessions ORDER BY participant")
    assert rows == [("alice",), ("bob",)], worker.tail()
    assert not worker.find(lambda line: line.get("level") in ("error", "critical")), worker.tail()
    await alice.leave()
    await bob.leave()
