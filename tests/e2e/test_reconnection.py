"""Seed 001, server side, with a real network outage: the client's packets stop (no leave,
no close) and the worker rides it out or, past the grace period, cleans up."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from testkit.audio import speech_wav
from testkit.checks import event, wait_rows
from testkit.client_proc import ClientProcess
from testkit.livekit_server import ROOT, LiveKitServer
from testkit.network import Outage
from testkit.worker import LogLine, WorkerProcess
from tests.e2e.conftest import Providers, StartClara

OUTAGE = 5.0
StartErin = Callable[[], Awaitable[ClientProcess]]


@pytest.fixture
async def erin(
    livekit_server: LiveKitServer, outage: Outage, room_name: str
) -> AsyncIterator[StartErin]:
    """Starts Erin's client, in a process of its own whose network the test can cut (once
    the worker runs: a room made before a worker registers gets no agent)."""
    processes: list[ClientProcess] = []

    async def start() -> ClientProcess:
        room, identity = room_name, "erin"
        argv = [sys.executable, "-m", "testkit.client_proc", livekit_server.url]
        argv += [livekit_server.token(identity, room), room, identity]
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src")])  # this tree's
        processes.append(await ClientProcess.start(outage.command(argv), env))
        await processes[-1].wait_event("joined")
        return processes[-1]

    try:
        yield start
    finally:
        for process in processes:
            await process.close()


def state_change(to: str, **fields: str) -> object:
    return event("connection state changed", participant="erin", to=to, **fields)


async def ask(worker: WorkerProcess, client: ClientProcess, text: str) -> LogLine:
    """Erin says ``text``; the turn Clara completed for it."""
    since = len(worker.lines)
    await client.wait_event("said", since=await client.send(f"say {speech_wav(text)}"))
    return await worker.wait_line(
        event("turn completed", participant="erin"), f"the turn {text!r}", since=since
    )


async def test_a_five_second_outage_resumes_the_same_session_with_its_history(
    clara: StartClara, providers: Providers, erin: StartErin, outage: Outage
) -> None:
    providers.deepgram.transcripts = ["before the outage", "after the outage"]
    worker = await clara(CLARA_RECONNECT_GRACE_PERIOD="30")
    client = await erin()
    ready = await worker.wait_line(event("session initialized", participant="erin"), "session")
    session_id = ready["session_id"]
    await ask(worker, client, "Before the outage")

    since = len(worker.lines)
    outage.cut()
    cut_at = time.monotonic()
    down = await worker.wait_line(state_change("reconnecting"), "reconnecting", since=since)
    await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - cut_at)))  # the outage itself
    outage.restore()
    back = await worker.wait_line(state_change("connected"), "connected again", since=since)
    print(f"\nreconnecting after {down['reason']!r}; back after {back['reason']!r}")

    assert down["session_id"] == back["session_id"] == session_id
    assert not worker.find(event("cleaning up session", participant="erin"))
    await ask(worker, client, "After the outage")
    messages = providers.openai.chat_requests[-1]["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == [
        "before the outage",
        "after the outage",
    ]


async def test_an_outage_past_the_grace_period_cleans_up_and_keeps_the_summary(
    clara: StartClara, erin: StartErin, outage: Outage, tmp_path: Path
) -> None:
    worker = await clara(CLARA_RECONNECT_GRACE_PERIOD="3")
    client = await erin()
    ready = await worker.wait_line(event("session initialized", participant="erin"), "session")
    await ask(worker, client, "Remember this")

    since = len(worker.lines)
    outage.cut()
    cleaned = await worker.wait_line(
        event("cleaning up session", participant="erin"), "the cleanup", since=since, timeout=90
    )
    print(f"\ncleaned up: {cleaned['reason']!r}")
    assert cleaned["session_id"] == ready["session_id"]
    assert worker.find(state_change("reconnecting"), since)
    rows = await wait_rows(
        tmp_path / "data",
        "SELECT session_id, message_count FROM sessions WHERE participant = ?",
        "erin",
        count=1,
    )
    assert rows == [(ready["session_id"], 2)]
    outage.restore()
