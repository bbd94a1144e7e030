"""How many concurrent conversations one worker carries: clara_voice against bare livekit.

Method: everything runs on this machine, inside the private network namespace
(``scripts/private-net``): a real livekit-server (the one ``scripts/livekit-server``
builds), the loopback Deepgram and OpenAI peers (``testkit.loopback_providers``: they
answer at once), and one worker at a time in livekit's production mode (``start``).
Admission is off by default (``--admission``): the worker reports a load of 0 and accepts
every job, because livekit's load is the whole machine's CPU, this bench's clients
included, and with it the server stops sending jobs to the only worker once the machine
is 70 % busy (see bench/density_workers.py). For each worker variant, first idle
(0 rooms), then for each room count N:

* the rooms arrive one after the other (the next room is created once the agent of the
  previous one listens; ``--burst``: all at once), each with one person, a real rtc client
  (``bench/density_rooms.py``); *job start* is room created → agent joined;
* then all rooms talk at once (each room starting within ``--stagger`` seconds): the
  person says one espeak-ng question, waits for the agent's spoken reply to end, pauses
  ``--gap`` seconds, ``--turns`` times; *reply latency* is the end of the question as sent
  → the first agent audio frame heard through the SFU (Opus both ways);
* while they talk, the CPU time of the worker's process tree (the worker, its forkserver,
  its job processes) and of livekit-server, and the largest sum of PSS over the worker's
  tree (``bench/density_procs.py``); per room: (figure at N − figure idle) / N;
* the p95 reply latency is compared with the variant's one-room p95 (*inflation*); the
  room counts stop growing once it passes +100 % or a job or turn fails;
* then everyone leaves, the rooms are deleted once the agents closed their sessions, and
  the worker's tree settles (jobs ended, warm processes back) before the next N.

The people's clients and the providers run in this process, on the same cores: their CPU
("bench client", with the worst lateness of its event loop, which delays what the
clients hear), the whole machine's busy CPU and the load average at the start of each
phase are printed, so that a phase disturbed by other work on the machine shows.

    scripts/private-net .venv/bin/python -m bench.density [--rooms 1 2 4 8 16] [--quick]
        [--bare-vad] [--executor thread] [--idle K ...] [--no-prewarm] [--burst]
        [--admission livekit]

Each phase is bounded (``--job-timeout`` per room, ``--phase-timeout`` for the turns,
60 s to settle) and so is the run (``--budget`` minutes).
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
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import secrets  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from importlib import metadata  # noqa: E402
from typing import Any  # noqa: E402

import psutil  # type: ignore[import-untyped]  # noqa: E402
from livekit import api  # noqa: E402

from bench._loop import StallMeter  # noqa: E402
from bench.density_procs import MachineMeter, TreeMeter, children_named, tree  # noqa: E402
from bench.density_report import Phase, first_past, set_inflation, table  # noqa: E402
from bench.density_rooms import UTTERANCE, RoomRun, close_rooms, converse, open_room  # noqa: E402
from bench.density_workers import Providers, Variant, running, says, settle  # noqa: E402
from testkit.audio import speech_wav  # noqa: E402
from testkit.livekit_server import LiveKitServer, server_version  # noqa: E402
from testkit.loopback_providers import LoopbackDeepgram, LoopbackOpenAI  # noqa: E402
from testkit.worker import WorkerProcess  # noqa: E402

STOP_INFLATION = 1.0
REFUSALS = (
    "full capacity",  # the worker's log
    "failed to assign job",  # livekit-server's
    "no worker available",
    "failed to send job request",
)


def log(text: str) -> None:
    print(f"[density {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "commit": commit or "unknown",
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "livekit_agents": metadata.version("livekit-agents"),
        "livekit_rtc": metadata.version("livekit"),
        "livekit_server": server_version(),
    }


class Bench:
    def __init__(self, args: argparse.Namespace, server: LiveKitServer, providers: Providers):
        self.args = args
        self.server = server
        self.providers = providers
        self.speech = speech_wav(UTTERANCE)
        self.rng = random.Random(7)
        found = children_named("livekit-server")
        self.server_meter = TreeMeter(found[0]) if found else None

    def _refusals(self, worker: WorkerProcess, since: int, log_offset: int) -> int:
        count = sum(
            1 for line in worker.lines[since:] if any(says(line, text) for text in REFUSALS)
        )
        with contextlib.suppress(OSError):
            with self.server.log_path.open("rb") as f:
                f.seek(log_offset)
                text = f.read().decode(errors="replace")
            count += sum(text.count(t) for t in REFUSALS)
        return count

    def _diagnose(self, worker: WorkerProcess, since: int, log_offset: int) -> None:
        """What the worker and the server said about jobs, to stderr."""
        for line in worker.lines[since:]:
            if line.get("level") in ("warning", "error", "critical", "WARNING", "ERROR"):
                log("worker: " + json.dumps(line)[:300])
        with contextlib.suppress(OSError), self.server.log_path.open("rb") as f:
            f.seek(log_offset)
            for text in f.read().decode(errors="replace").splitlines():
                if "job" in text.lower() or "worker" in text.lower():
                    log("server: " + text[:300])

    async def _open(self, lkapi: api.LiveKitAPI, prefix: str, n: int) -> list[RoomRun]:
        names = [f"{prefix}-{i}" for i in range(n)]
        timeout = self.args.job_timeout
        if self.args.burst:
            return list(
                await asyncio.gather(
                    *(open_room(self.server, lkapi, x, job_timeout=timeout) for x in names)
                )
            )
        runs: list[RoomRun] = []
        for name in names:
            runs.append(await open_room(self.server, lkapi, name, job_timeout=timeout))
            if runs[-1].error:
                break  # the worker took no more: later rooms would not get an agent either
        return runs

    async def idle(self, variant: Variant, root: psutil.Process) -> Phase:
        phase = Phase(variant.name, 0, os.getloadavg())
        started = time.monotonic()
        async with TreeMeter(root).window() as usage:
            await asyncio.sleep(self.args.idle_seconds)  # measuring the idle worker
        phase.worker = usage
        phase.seconds = time.monotonic() - started
        return phase

    async def _talk(self, phase: Phase, root: psutil.Process, live: list[RoomRun]) -> None:
        """All rooms talk at once while the meters run."""
        args = self.args
        bench = psutil.Process()
        bench_cpu0 = sum(bench.cpu_times()[:2])
        with MachineMeter().window() as busy, StallMeter(0.02) as lag:
            async with contextlib.AsyncExitStack() as stack:
                usage = await stack.enter_async_context(TreeMeter(root).window())
                server_usage = None
                if self.server_meter is not None:
                    server_usage = await stack.enter_async_context(self.server_meter.window())
                talks = [
                    converse(
                        r,
                        self.speech,
                        turns=args.turns,
                        gap=args.gap,
                        reply_timeout=args.reply_timeout,
                        delay=self.rng.uniform(0, args.stagger),
                    )
                    for r in live
                ]
                try:
                    await asyncio.wait_for(asyncio.gather(*talks), args.phase_timeout)
                except TimeoutError:
                    phase.errors.append(f"the turns took over {args.phase_timeout}s")
        phase.worker, phase.server = usage, server_usage
        phase.bench_cores = (sum(bench.cpu_times()[:2]) - bench_cpu0) / usage.seconds
        phase.machine_cores = busy[0]
        phase.loop_lag_max = lag.worst
        for r in live:
            phase.latencies.extend(r.latencies)
            phase.failed_turns += r.failed_turns + args.turns - r.turns_done  # cut off
            phase.no_speaking_state += r.no_speaking_state

    async def phase(self, variant: Variant, worker: WorkerProcess, n: int) -> Phase:
        root = psutil.Process(worker.proc.pid)
        since = len(worker.lines)
        log_offset = self.server.log_path.stat().st_size
        phase = Phase(variant.name, n, os.getloadavg())
        phase.processes_before = len(tree(root))
        started = time.monotonic()
        prefix = f"{variant.name}-n{n}-{secrets.token_hex(2)}"
        async with self.server.api() as lkapi:
            runs = await self._open(lkapi, prefix, n)
            live = [r for r in runs if r.error is None]
            phase.failed_jobs = n - len(live)
            phase.job_starts = [r.job_start for r in runs if r.job_start is not None]
            if live:
                await self._talk(phase, root, live)
            phase.errors += [f"{r.name}: {r.error}" for r in runs if r.error]
            await close_rooms(runs, lkapi, worker)
        phase.processes_after = await settle(root, most=phase.processes_before)
        phase.refusals = self._refusals(worker, since, log_offset)
        if phase.failed_jobs or phase.refusals:
            self._diagnose(worker, since, log_offset)
        phase.seconds = time.monotonic() - started
        return phase

    async def variant(self, variant: Variant, rooms: list[int], deadline: float) -> list[Phase]:
        log(f"starting {variant.name}")
        phases: list[Phase] = []
        with tempfile.TemporaryDirectory(prefix="clara-density-") as tmp:
            async with running(variant, self.server, self.providers, Path(tmp)) as worker:
                root = psutil.Process(worker.proc.pid)
                await settle(root)
                phases.append(await self.idle(variant, root))
                self.emit(phases[-1], phases)
                for n in rooms:
                    if time.monotonic() > deadline:
                        log(f"time budget spent: {variant.name} stops before {n} rooms")
                        break
                    log(f"{variant.name}: {n} rooms (load average {os.getloadavg()[0]:.2f})")
                    phases.append(await self.phase(variant, worker, n))
                    set_inflation(phases)
                    self.emit(phases[-1], phases)
                    last = phases[-1]
                    if last.failed or (last.inflation or 0.0) > STOP_INFLATION:
                        log(f"{variant.name}: stops after {n} rooms (failures or p95 > +100 %)")
                        break
        return phases

    def emit(self, phase: Phase, phases: list[Phase]) -> None:
        idle = next((p for p in phases if p.rooms == 0), None)
        print(json.dumps(phase.to_json(idle)), flush=True)


def variants(args: argparse.Namespace) -> list[tuple[Variant, list[int]]]:
    """The variants the options ask for, each with its room counts."""
    livekit = args.admission == "livekit"
    threshold = args.load_threshold
    if threshold is None:
        threshold = 1.0 if livekit else float("inf")
    bare_rooms = args.bare_rooms or args.rooms
    chosen: list[tuple[Variant, list[int]]] = []
    for executor in args.executor or [None]:
        for idle in args.idle or [None]:
            base = Variant("clara", executor, idle, load_threshold=threshold, report_load=livekit)
            if not args.skip_clara:
                chosen.append((base, args.rooms))
            for detection in args.clara_turn_detection or []:
                chosen.append((replace(base, turn_detection=detection), args.rooms))
            bare = replace(base, kind="bare")
            if not args.skip_bare:
                chosen.append((bare, bare_rooms))
            if args.bare_vad:
                chosen.append((replace(bare, vad_turns=True), bare_rooms))
            if args.no_prewarm:
                chosen.append((replace(bare, prewarm=False), bare_rooms))
    return chosen


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--bare-rooms", type=int, nargs="+", help="default: --rooms")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 and 2 rooms, 2 turns")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--gap", type=float, default=1.0, help="pause between turns (s)")
    parser.add_argument("--stagger", type=float, default=2.0, help="rooms start within (s)")
    parser.add_argument("--burst", action="store_true", help="create a phase's rooms at once")
    parser.add_argument("--executor", choices=["process", "thread"], action="append")
    parser.add_argument("--idle", type=int, action="append", default=[], help="idle processes")
    parser.add_argument("--no-prewarm", action="store_true", help="add a bare variant without")
    parser.add_argument(
        "--bare-vad", action="store_true", help="add a bare variant whose turns end on the VAD"
    )
    parser.add_argument(
        "--skip-bare", action="store_true", help="no bare variant with livekit's turn defaults"
    )
    parser.add_argument("--skip-clara", action="store_true")
    parser.add_argument(
        "--clara-turn-detection",
        action="append",
        help="add a clara variant with this CLARA_TURN_DETECTION (repeatable)",
    )
    parser.add_argument(
        "--admission",
        choices=["off", "livekit"],
        default="off",
        help="livekit: the worker reports its load and declines jobs at --load-threshold",
    )
    parser.add_argument("--load-threshold", type=float, help="default: inf, or 1 (livekit)")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--job-timeout", type=float, default=20.0)
    parser.add_argument("--reply-timeout", type=float, default=15.0)
    parser.add_argument("--phase-timeout", type=float, default=100.0, help="the turns' bound")
    parser.add_argument("--budget", type=float, default=40.0, help="minutes for the whole run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rooms, args.turns = [1, 2], 2
        args.bare_rooms = args.bare_rooms or [1, 2]
    return args


async def main() -> int:
    args = parse()
    if os.environ.get("CLARA_PRIVATE_NET") != "1":
        print(
            "bench.density runs inside the private network namespace: "
            "scripts/private-net .venv/bin/python -m bench.density ...",
            file=sys.stderr,
        )
        return 2
    deadline = time.monotonic() + args.budget * 60
    chosen = variants(args)
    print(
        json.dumps(
            {
                "method": "per room: one rtc client saying an espeak-ng question, waiting for "
                "the spoken reply, --turns times; reply latency = end of the question as sent "
                "-> first agent audio frame (RMS > 0.01) decoded by the client; job start = "
                "CreateRoom -> agent joined (server time); CPU = CPU time of the worker's "
                "process tree (and of livekit-server) over the turns / wall time; memory = "
                "largest sum of PSS over the worker's tree during the turns; per room = "
                "(figure - idle figure) / rooms",
                "machine": machine(),
                "admission": args.admission,
                "utterance": UTTERANCE,
                "turns": args.turns,
                "gap_s": args.gap,
                "stagger_s": args.stagger,
                "arrival": "burst" if args.burst else "one after the other",
                "variants": [v.describe() for v, _ in chosen],
                "rooms": {v.name: r for v, r in chosen},
            }
        ),
        flush=True,
    )
    results: dict[str, list[Phase]] = {}
    with tempfile.TemporaryDirectory(prefix="clara-density-lk-") as tmp:
        server = LiveKitServer(Path(tmp))
        server.start()
        try:
            async with LoopbackOpenAI() as openai, LoopbackDeepgram() as deepgram:
                bench = Bench(args, server, Providers(openai, deepgram))
                for variant, rooms in chosen:
                    if time.monotonic() > deadline:
                        break
                    try:
                        results[variant.name] = await bench.variant(variant, rooms, deadline)
                    except Exception as exc:  # one variant failing leaves the others' figures
                        log(f"{variant.name} failed: {type(exc).__name__}: {exc}")
        finally:
            server.stop()
    print("\n" + table(results))
    for name, phases in results.items():
        past = first_past(phases)
        print(f"{name}: p95 reply latency past +10 % (or failures) first at: {past or 'never'}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
