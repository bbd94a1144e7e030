"""A fleet of clara workers through the real server: failover, dispatch, admission.

Method: everything runs on this machine, inside the private network namespace
(``scripts/private-net``): a real livekit-server, the loopback Deepgram and OpenAI peers
(they answer at once), and real workers (``python -m clara_voice start``, default
settings but the loopback providers; each its own data directory; on this 2-core machine
each takes 10 sessions, CLARA_MAX_SESSIONS' default, so 7 rooms at production's 0.7
threshold). People are real rtc
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

Bare livekit is measured in the same run, with the same server and providers: the minimal
livekit-agents worker of bench/density_bare.py (livekit's defaults: automatic dispatch, its
load the machine's CPU, no room watcher), reached by people whose tokens ask for no agent
by name. ``failover`` crashes it once (``--bare-crashes``), with a second bare worker up;
``dispatch`` and ``admission`` run it as they run clara. A room that gets no agent within
the bound (30 s) is counted, not timed.

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
from typing import Literal  # noqa: E402

from bench.density_workers import registered  # noqa: E402
from testkit.human import Human  # noqa: E402
from testkit.livekit_server import AGENT_NAME, LiveKitServer  # noqa: E402
from testkit.loopback_providers import LoopbackDeepgram, LoopbackOpenAI  # noqa: E402
from testkit.worker import (  # noqa: E402
    STARTUP_TIMEOUT,
    WorkerProcess,
    free_port,
    running_worker,
    worker_env,
)

REPLY = "Here I am."
BARE_BOUND = 30.0
"""Seconds a room waits for a bare livekit agent before it is counted as never served."""

Kind = Literal["clara", "bare"]


def in_room(line: dict[str, object], room: str) -> bool:
    """A worker's line saying its agent started in ``room`` (clara) or took its job (livekit)."""
    said = str(line.get("event") or line.get("message") or "")
    return line.get("room") == room and said in ("agent started", "received job request")


def person(group: Fleet, room: str, kind: Kind) -> Human:
    """Someone opening ``room``: clara's tokens ask for Clara by name, bare livekit's for
    no agent (its automatic dispatch)."""
    return Human(group.server, room, "person", agent_name=None if kind == "bare" else AGENT_NAME)


def figures(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
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

    async def start_worker(self, kind: Kind = "clara") -> WorkerProcess:
        self._n += 1
        folder = self.work / f"worker-{self._n}"
        folder.mkdir()
        env = {
            **self.env,
            "CLARA_HTTP_PORT": str(free_port()),
            "CLARA_PROMETHEUS_PORT": str(free_port()),
            "CLARA_DATA_DIR": str(folder / "data"),
        }
        command = None
        if kind == "bare":
            env.update(
                BENCH_STT_URL=env["CLARA_STT_BASE_URL"],
                BENCH_OPENAI_URL=env["CLARA_LLM_BASE_URL"],
                BENCH_HTTP_PORT=env["CLARA_HTTP_PORT"],
                PYTHONPATH=f"{ROOT}:{env.get('PYTHONPATH', '')}",
            )
            command = [sys.executable, "-m", "bench.density_bare", "start"]
        worker = await self._stack.enter_async_context(running_worker(env, folder, command))
        await worker.wait_line(registered, "registered", timeout=STARTUP_TIMEOUT)
        self.workers.append(worker)
        return worker

    def serving(self, room: str) -> WorkerProcess:
        """The worker whose job is in ``room`` (clara's line, or livekit's)."""
        return next(w for w in self.workers if w.find(lambda line: in_room(line, room)))

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
            del env["CLARA_NUM_IDLE_PROCESSES"]  # the harness's 1; here livekit's default
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


async def failover(work: Path, crashes: int, every: float, kind: Kind) -> dict[str, object]:
    to_agent: list[float] = []
    to_voice: list[float] = []
    never = 0
    async with fleet(work) as group:
        await group.start_worker(kind)
        await group.start_worker(kind)
        for n in range(crashes):
            room = f"failover-{kind}-{n}-{secrets.token_hex(2)}"
            someone = person(group, room, kind)
            await someone.join()
            await ask_until_answered(someone, every, 30)
            old = someone.agent
            assert old is not None
            victim = group.serving(room)
            crashed_at = time.monotonic()
            await victim.crash()
            group.workers.remove(victim)
            replacement = asyncio.create_task(group.start_worker(kind))
            try:
                to_agent.append(await until(replaced(someone, old.identity), BARE_BOUND))
            except TimeoutError:
                never += 1
            else:
                to_voice.append(await ask_until_answered(someone, every, 60) - crashed_at)
            await someone.leave()
            await replacement
    return {
        "agent_back": figures(to_agent),
        "speaking_again": figures(to_voice),
        "never_back": never,
    }


async def time_to_agent(someone: Human) -> float | None:
    """Seconds from the person's join to an agent in the room (``None``: not within the
    bound)."""
    started = time.monotonic()
    await someone.join(wait_agent=False)
    try:
        await until(lambda: someone.agent is not None, BARE_BOUND)
    except TimeoutError:
        return None
    return time.monotonic() - started


def timed(waits: list[float | None]) -> dict[str, object]:
    served = [w for w in waits if w is not None]
    return {"to_agent": figures(served), "never_served": len(waits) - len(served)}


async def dispatch(work: Path, rooms: int, kind: Kind) -> dict[str, object]:
    async with fleet(work) as group:
        await group.start_worker(kind)
        await group.start_worker(kind)
        people = [
            person(group, f"dispatch-{kind}-{n}-{secrets.token_hex(2)}", kind) for n in range(rooms)
        ]
        waits = await asyncio.gather(*(time_to_agent(p) for p in people))
        served = {id(group.serving(p.room_name)) for p in people if p.agent is not None}
        await asyncio.gather(*(p.leave() for p in people))
    return {**timed(list(waits)), "workers_used": len(served)}


async def admission(work: Path, kind: Kind, per_phase: int = 5) -> dict[str, object]:
    async def one_room(group: Fleet, n: int) -> float | None:
        someone = person(group, f"admission-{kind}-{n}-{secrets.token_hex(2)}", kind)
        waited = await time_to_agent(someone)
        await someone.leave()
        return waited

    async with fleet(work) as group:
        await group.start_worker(kind)
        quiet = [await one_room(group, n) for n in range(per_phase)]
        context = multiprocessing.get_context("spawn")
        hogs = [context.Process(target=_burn, args=(300,)) for _ in range(os.cpu_count() or 2)]
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
    return {"quiet": timed(quiet), "every_core_busy": timed(busy), "declined_logged": declined}


MEASUREMENTS: dict[str, Callable[..., Awaitable[dict[str, object]]]] = {
    "failover": failover,
    "dispatch": dispatch,
    "admission": admission,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crashes", type=int, default=10)
    parser.add_argument("--bare-crashes", type=int, default=1)
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--ask-every", type=float, default=2.5)
    parser.add_argument("--only", choices=sorted(MEASUREMENTS))
    parser.add_argument("--kinds", default="clara,bare", help="clara, bare or both")
    args = parser.parse_args()
    print(json.dumps({"method": " ".join(__doc__.split("\n\n")[1].split())}))
    for name in [args.only] if args.only else list(MEASUREMENTS):
        for kind in args.kinds.split(","):
            with tempfile.TemporaryDirectory(prefix=f"clara-{name}-") as folder:
                work = Path(folder)
                if name == "failover":
                    crashes = args.crashes if kind == "clara" else args.bare_crashes
                    result = asyncio.run(failover(work, crashes, args.ask_every, kind))
                elif name == "dispatch":
                    result = asyncio.run(dispatch(work, args.rooms, kind))
                else:
                    result = asyncio.run(admission(work, kind))
            print(json.dumps({"measurement": name, "worker": kind, **result}), flush=True)


if __name__ == "__main__":
    main()
