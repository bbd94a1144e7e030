"""A fleet of clara workers through the real server: failover, dispatch, admission.

Method: everything runs on this machine, inside the private network namespace
(``scripts/private-net``): a real livekit-server, the loopback Deepgram and OpenAI peers
(they answer at once), and real workers (``python -m clara_voice start``, default
settings but the loopback providers; each its own data directory). People are real rtc
clients (testkit.human) speaking espeak-ng. Three measurements, each printed as a JSON
line with its figures:

* ``failover`` (``--crashes`` times, two workers up): a person talks with Clara; the
  worker serving the room is SIGKILLed with its job processes (a machine or pod dying)
  and a replacement worker is started at once, so two are up for the next round. Timed
  from the SIGKILL: the new Clara agent in the room (the client sees it join), and Clara
  speaking again (the person asks again every ``--ask-every`` seconds until Clara's voice
  is heard: the figure has that granularity).
* ``dispatch`` (two workers): ``--rooms`` people each open a room at the same moment;
  per room, from the client's join to the agent's joining the room, as the client sees it.
* ``admission``: one worker in production mode (threshold 0.7); a person opens a room,
  five times on a quiet machine, five while other programs burn every core; per room,
  from the join to the agent in the room. Before issue 17 the busy rooms got no Clara at
  all (livekit's default load is the whole machine's CPU).

Bare livekit is not compared here: it has no failover or room watcher of its own, and
its dispatch is the same server-side machinery.

    scripts/private-net .venv/bin/python -m bench.fleet [--crashes 10] [--rooms 20]
        [--only failover|dispatch|admission]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator, Awaitable, Callable  # noqa: E402

from testkit.checks import event  # noqa: E402
from testkit.human import Human  # noqa: E402
from testkit.livekit_server import LiveKitServer  # noqa: E402
from testkit.loopback_providers import LoopbackDeepgram, LoopbackOpenAI  # noqa: E402
from testkit.worker import (  # noqa: E402
    STARTUP_TIMEOUT,
    WorkerProcess,
    free_port,
    is_event,
    running_worker,
    worker_env,
)

REPLY = "Here I am."


def figures(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(values),
        "p50_s": round(statistics.median(values), 2),
        "p95_s": round(p95, 2),
        "max_s": round(max(values), 2),
    }


def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


class Fleet:
    """The server, the providers and the workers of one measurement."""

    def __init__(self, work: Path, server: LiveKitServer, env: dict[str, str]) -> None:
        self.work = work
        self.server = server
        self.env = env
        self.workers: list[WorkerProcess] = []
        self._stack = contextlib.AsyncExitStack()
        self._n = 0

    async def start_worker(self) -> WorkerProcess:
        self._n += 1
        folder = self.work / f"worker-{self._n}"
        folder.mkdir()
        env = {
            **self.env,
            "CLARA_HTTP_PORT": str(free_port()),
            "CLARA_PROMETHEUS_PORT": str(free_port()),
            "CLARA_DATA_DIR": str(folder / "data"),
        }
        worker = await self._stack.enter_async_context(running_worker(env, folder))
        await worker.wait_line(is_event("registered worker"), "registered", timeout=STARTUP_TIMEOUT)
        self.workers.append(worker)
        return worker

    def serving(self, room: str) -> WorkerProcess:
        return next(w for w in self.workers if w.find(event("agent started", room=room)))

    async def aclose(self) -> None:
        await self._stack.aclose()


@contextlib.asynccontextmanager
async def fleet(work: Path) -> AsyncIterator[Fleet]:
    (work / "livekit").mkdir(parents=True)
    server = LiveKitServer(work / "livekit")
    server.start()
    try:
        async with (
            LoopbackOpenAI(replies=lambda request: REPLY) as openai,
            LoopbackDeepgram(default_transcript="are you there") as deepgram,
        ):
            env = worker_env(
                url=server.url,
                api_key=server.api_key,
                api_secret=server.api_secret,
                http_port=0,
                CLARA_STT_BASE_URL=deepgram.base_url,
                CLARA_LLM_BASE_URL=openai.base_url,
                CLARA_TTS_BASE_URL=openai.base_url,
            )
            group = Fleet(work, server, env)
            try:
                yield group
            finally:
                await group.aclose()
    finally:
        server.stop()


async def until(check: Callable[[], object], bound: float) -> float:
    """Seconds until ``check()`` is true (polled every 20 ms, bounded)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > bound:
            raise TimeoutError(f"not within {bound} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def heard_after(person: Human, start: float) -> Callable[[], float | None]:
    return lambda: person.agent_sound_after(start)


async def ask_until_answered(person: Human, every: float, bound: float) -> float:
    """The person asks every ``every`` s until Clara's voice is heard; when it was."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        utterance = person.say("Are you there")
        await person.wait_until(utterance.ended.is_set, "the question was sent", timeout=10)
        voice = heard_after(person, utterance.ended_at or time.monotonic())
        with contextlib.suppress(AssertionError, TimeoutError):
            heard: float = await person.wait_until(voice, "voice", timeout=every)
            return heard
    raise TimeoutError("Clara never answered again")


def replaced(person: Human, old: str) -> Callable[[], bool]:
    """Whether a Clara agent other than ``old`` is in the person's room."""
    return lambda: person.agent is not None and person.agent.identity != old


async def failover(work: Path, crashes: int, every: float) -> dict[str, object]:
    to_agent: list[float] = []
    to_voice: list[float] = []
    async with fleet(work) as group:
        await group.start_worker()
        await group.start_worker()
        for n in range(crashes):
            room = f"failover-{n}-{secrets.token_hex(2)}"
            person = Human(group.server, room, "person")
            await person.join()
            await ask_until_answered(person, every, 30)
            old = person.agent
            assert old is not None
            victim = group.serving(room)
            crashed_at = time.monotonic()
            await victim.crash()
            group.workers.remove(victim)
            replacement = asyncio.create_task(group.start_worker())
            joined = await until(replaced(person, old.identity), 60)
            to_agent.append(joined)
            to_voice.append(await ask_until_answered(person, every, 60) - crashed_at)
            await person.leave()
            await replacement
    return {"agent_back": figures(to_agent), "speaking_again": figures(to_voice)}


async def dispatch(work: Path, rooms: int) -> dict[str, object]:
    async with fleet(work) as group:
        await group.start_worker()
        await group.start_worker()
        people = [
            Human(group.server, f"dispatch-{n}-{secrets.token_hex(2)}", "p") for n in range(rooms)
        ]

        async def timed(person: Human) -> float:
            started = time.monotonic()
            await person.join(wait_agent=False)
            await until(lambda: person.agent is not None, 60)
            return time.monotonic() - started

        waits = await asyncio.gather(*(timed(p) for p in people))
        served = {id(group.serving(p.room_name)) for p in people}
        await asyncio.gather(*(p.leave() for p in people))
    return {"to_agent": figures(list(waits)), "workers_used": len(served)}


async def admission(work: Path, per_phase: int = 5) -> dict[str, object]:
    async def one_room(group: Fleet, n: int) -> float:
        person = Human(group.server, f"admission-{n}-{secrets.token_hex(2)}", "p")
        started = time.monotonic()
        await person.join(wait_agent=False)
        await until(lambda: person.agent is not None, 60)
        waited = time.monotonic() - started
        await person.leave()
        return waited

    async with fleet(work) as group:
        await group.start_worker()
        quiet = [await one_room(group, n) for n in range(per_phase)]
        context = multiprocessing.get_context("spawn")
        hogs = [context.Process(target=_burn, args=(120,)) for _ in range(os.cpu_count() or 2)]
        for hog in hogs:
            hog.start()
        try:
            await asyncio.sleep(3)  # the machine is busy before the first room
            busy = [await one_room(group, 100 + n) for n in range(per_phase)]
        finally:
            for hog in hogs:
                hog.terminate()
                hog.join()
        worker = group.workers[0]
        declined = len(worker.find(lambda line: "room job declined" in str(line.get("event"))))
    return {"quiet": figures(quiet), "every_core_busy": figures(busy), "declined": declined}


MEASUREMENTS: dict[str, Callable[..., Awaitable[dict[str, object]]]] = {
    "failover": failover,
    "dispatch": dispatch,
    "admission": admission,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crashes", type=int, default=10)
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--ask-every", type=float, default=2.5)
    parser.add_argument("--only", choices=sorted(MEASUREMENTS))
    args = parser.parse_args()
    print(json.dumps({"method": " ".join(__doc__.split("\n\n")[1].split())}))
    for name in [args.only] if args.only else list(MEASUREMENTS):
        with tempfile.TemporaryDirectory(prefix=f"clara-{name}-") as work:
            if name == "failover":
                result = asyncio.run(failover(Path(work), args.crashes, args.ask_every))
            elif name == "dispatch":
                result = asyncio.run(dispatch(Path(work), args.rooms))
            else:
                result = asyncio.run(admission(Path(work)))
        print(json.dumps({"measurement": name, **result}), flush=True)


if __name__ == "__main__":
    main()
