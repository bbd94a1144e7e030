"""One room of bench/density.py: made through the server API, with one person talking.

The person is a :class:`testkit.human.Human` (a real rtc client: its microphone goes to the
SFU as Opus, the agent's audio comes back through it and is decoded). Per turn it says one
espeak-ng utterance in real time, and the *reply latency* is from the moment the last
voiced sample of it left the microphone to the first agent audio frame louder than silence
(RMS > 0.01) it decoded — what ``tests/e2e/test_conversation.py`` measures. It then waits
for the agent to finish (its audio silent for 0.6 s and its ``lk.agent.state``
``listening``), pauses, and says it again.

*Job start* is from just before the room was created (``CreateRoom``) to the time the
server gives as the agent participant's join (``joined_at``, milliseconds, same clock: the
server runs on this machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from livekit import api

from testkit.human import SOUND_RMS, Human
from testkit.livekit_server import LiveKitServer
from testkit.worker import LogLine, WorkerProcess

UTTERANCE = "What is the weather like today"
AGENT_STATE = "lk.agent.state"
REPLY_QUIET = 0.6
CLOSE_WAIT = 15.0
CLOSE_PAUSE = 3.0


@dataclass
class RoomRun:
    """One room's figures."""

    name: str
    created_at: float
    """``time.time()`` just before ``CreateRoom``."""
    human: Human
    job_start: float | None = None
    error: str | None = None
    latencies: list[float] = field(default_factory=list)
    failed_turns: int = 0
    turns_done: int = 0
    no_speaking_state: int = 0
    """Replies heard, and over, without the agent's ``lk.agent.state`` going ``speaking``."""


def agent_state(human: Human) -> str | None:
    agent = human.agent
    return None if agent is None else agent.attributes.get(AGENT_STATE)


async def open_room(
    server: LiveKitServer, lkapi: api.LiveKitAPI, name: str, *, job_timeout: float
) -> RoomRun:
    """Create room ``name``, join it, wait for the agent to join and listen."""
    created_at = time.time()
    await lkapi.room.create_room(api.CreateRoomRequest(name=name, empty_timeout=120))
    human = Human(server, name, "caller")
    run = RoomRun(name, created_at, human)
    try:
        await human.join(wait_agent=False)
        agent = await human.wait_until(lambda: human.agent, "the agent joined", timeout=job_timeout)
        joined = agent.joined_at
        run.job_start = (joined.timestamp() if joined else time.time()) - created_at
        await human.wait_until(
            lambda: agent_state(human) == "listening", "the agent listening", timeout=job_timeout
        )
    except AssertionError as exc:
        run.error = str(exc).split("\n")[0]
    return run


async def converse(
    run: RoomRun, speech: Path, *, turns: int, gap: float, reply_timeout: float, delay: float
) -> None:
    """``turns`` turns of ``speech`` and the agent's reply, after ``delay`` seconds."""
    human = run.human
    await asyncio.sleep(delay)  # the rooms' turns do not all start together
    for _ in range(turns):
        since = len(human.agent_attribute_changes)
        utterance = human.say(speech)
        try:
            await human.wait_until(utterance.ended.is_set, "the utterance was sent", timeout=30)
            ended = utterance.ended_at or time.monotonic()
            heard = await human.wait_until(
                lambda e=ended: human.agent_sound_after(e),  # type: ignore[misc]
                "the reply audio",
                timeout=reply_timeout,
            )
            run.latencies.append(heard - ended)
            await _reply_over(human, bound=reply_timeout + 20)
            if "speaking" not in _states(human, since):
                run.no_speaking_state += 1
        except AssertionError as exc:
            run.failed_turns += 1
            run.error = (
                run.error or f"{str(exc).splitlines()[0]} (agent states: {_states(human, since)})"
            )
        run.turns_done += 1
        await asyncio.sleep(gap)  # the person's pause before the next question


def _states(human: Human, since: int) -> list[str]:
    return [c[AGENT_STATE] for c in human.agent_attribute_changes[since:] if AGENT_STATE in c]


def _last_sound(human: Human) -> float:
    last = 0.0
    for heard in human.heard.values():
        last = max(last, next((t for t, rms in reversed(heard.frames) if rms > SOUND_RMS), 0.0))
    return last


async def _reply_over(human: Human, *, bound: float) -> None:
    """Wait until the agent has been silent for :data:`REPLY_QUIET` seconds and its state is
    ``listening``. The client decodes silence as frames that wake no one: polled every 0.1 s."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        quiet = time.monotonic() - _last_sound(human) >= REPLY_QUIET
        if quiet and agent_state(human) == "listening":
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{human.identity}: the agent's reply did not end in {bound}s")


async def close_rooms(runs: list[RoomRun], lkapi: api.LiveKitAPI, worker: WorkerProcess) -> None:
    """Everyone leaves; once the agents have closed their sessions, the rooms are deleted
    (which ends the jobs).

    clara_voice logs ``session closed`` (with the room) when a session's cleanup is done:
    the rooms wait for it, at most :data:`CLOSE_WAIT` seconds. A room deleted while the
    cleanup of its participant's session is still under way can leave that job's process
    running (seen with clara_voice: its pipeline's close never returns). The bare worker
    logs no such line: its rooms wait :data:`CLOSE_PAUSE` seconds.
    """
    since = len(worker.lines)
    await asyncio.gather(*(_leave(r) for r in runs))
    clara = [r for r in runs if r.job_start is not None and worker.find(_is_clara)]
    if clara:
        with contextlib.suppress(AssertionError):
            await asyncio.gather(
                *(
                    worker.wait_line(
                        _session_closed(r.name),
                        f"{r.name}'s session closed",
                        timeout=CLOSE_WAIT,
                        since=since,
                    )
                    for r in clara
                )
            )
    else:
        await asyncio.sleep(CLOSE_PAUSE)  # the bare agent's cleanup: it logs no end
    for r in runs:
        with contextlib.suppress(Exception):
            await lkapi.room.delete_room(api.DeleteRoomRequest(room=r.name))


def _session_closed(room: str) -> Callable[[LogLine], bool]:
    return lambda line: line.get("event") == "session closed" and line.get("room") == room


def _is_clara(line: LogLine) -> bool:
    return str(line.get("logger", "")).startswith("clara_voice")


async def _leave(run: RoomRun) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(run.human.leave(), 10)


__all__ = ["UTTERANCE", "RoomRun", "agent_state", "close_rooms", "converse", "open_room"]
