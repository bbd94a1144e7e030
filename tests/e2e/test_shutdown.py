"""Stopping the worker with live conversations: nothing is lost, every client is told;
and a job whose room is deleted under it ends within its bound."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from livekit import api

from testkit.checks import event, joined, store_rows, talk, wait_rows
from testkit.human import Human
from testkit.livekit_server import LiveKitServer
from testkit.worker import LogLine, wait_exited
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


def clara_error(line: LogLine) -> bool:
    return str(line.get("logger", "")).startswith("clara_voice") and line.get("level") in (
        "error",
        "critical",
    )


async def test_a_room_deleted_while_a_leavers_session_closes_ends_the_job_within_its_bound(
    livekit_server: LiveKitServer,
    clara: StartClara,
    room_name: str,
    providers: Providers,
    tmp_path: Path,
) -> None:
    """Regression (issue 17, item 5): a room deleted within about 50 ms of a participant
    leaving, while that session's cleanup ran, hung the job process until livekit's
    ``session_end_timeout`` (300 s): unpublishing the agent's track for that participant
    waited for an answer the server never sends once the room is gone, the agent's close
    waited for that cleanup, and livekit waited for the agent's close."""
    providers.openai.replies = ["First answer."]
    worker = await clara(CLARA_JOB_SHUTDOWN_TIMEOUT=str(JOB_SHUTDOWN))
    alice = Human(livekit_server, room_name, "alice")
    await joined(worker, alice)
    await talk(alice, "Hello there", "First answer.")

    async with livekit_server.api() as server_api:
        await alice.leave()
        # deleted as soon as the worker says alice's cleanup has begun (tens of ms later)
        await worker.wait_line(event("cleaning up session", participant="alice"), "the cleanup")
        await server_api.room.delete_room(api.DeleteRoomRequest(room=room_name))
        deleted = time.monotonic()

    ended = await worker.wait_line(
        event("process exiting", room=room_name), "saying the job ended", timeout=JOB_SHUTDOWN
    )
    left = JOB_SHUTDOWN - (time.monotonic() - deleted)
    await asyncio.wait_for(wait_exited([int(ended["pid"])]), max(left, 0.1))
    took = time.monotonic() - deleted
    print(f"\nroom deleted -> job process gone: {took:.1f} s")

    assert took < JOB_SHUTDOWN, worker.tail()
    rows = await wait_rows(
        tmp_path / "data", "SELECT participant, message_count FROM sessions", count=1
    )
    assert rows == [("alice", 2)], worker.tail()
    assert not worker.find(clara_error), worker.tail()  # a deleted room is no failure
