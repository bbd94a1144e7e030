"""The workers bench/density.py loads: clara_voice's and a bare livekit-agents one.

Each runs as ``python -m ... start`` (livekit's production mode) in a process group of its
own, with its JSON log lines read by :class:`testkit.worker.WorkerProcess`:

* ``clara``: ``python -m clara_voice start`` with the environment of the end-to-end tests
  (:func:`testkit.worker.worker_env`) and the loopback providers;
  ``CLARA_NUM_IDLE_PROCESSES`` is livekit's default (the CPU count) unless the variant sets
  it. With a job executor other than livekit's default, or a load threshold above what
  ``CLARA_LOAD_THRESHOLD`` accepts (1), it runs through :mod:`bench.density_clara`.
* ``bare``: :mod:`bench.density_bare` with the same providers and the same load
  threshold.

Admission is off by default: the worker reports a load of 0 and its load threshold is
infinite, so that it gets and accepts every job. livekit's load is the CPU use of the
whole machine (its cgroup), this bench's clients and livekit-server included; the worker
declines jobs from its ``load_threshold`` (at most 1 through ``CLARA_LOAD_THRESHOLD``),
and the server sends none to a worker at load 1 or above the server's
``agents.target_load`` (0.7) — and a room no worker took never gets an agent (the server
does not retry). ``Variant(report_load=True, load_threshold=1)`` is clara_voice as
deployed with ``CLARA_LOAD_THRESHOLD=1``.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil  # type: ignore[import-untyped]

from bench.density_procs import tree
from testkit.livekit_server import LiveKitServer
from testkit.loopback_providers import LoopbackDeepgram, LoopbackOpenAI
from testkit.worker import (
    STARTUP_TIMEOUT,
    LogLine,
    WorkerProcess,
    free_port,
    running_worker,
    worker_env,
)

ROOT = Path(__file__).resolve().parents[1]
SETTLE_TIMEOUT = 60.0
SETTLE_QUIET = 3.0
"""Seconds the tree must keep the same processes, nearly idle, to count as settled."""
SETTLE_CPU = 0.15
"""Cores: the tree is settled when it uses less than this."""


@dataclass(frozen=True)
class Variant:
    """One worker configuration the bench loads."""

    kind: Literal["clara", "bare"]
    executor: Literal["process", "thread"] | None = None
    """livekit's job executor type; None: its default (process on Linux)."""
    idle: int | None = None
    """``num_idle_processes``; None: AgentServer's default (the CPU count)."""
    prewarm: bool = True
    """bare only: the VAD loaded in the prewarm function (else in each job)."""
    load_threshold: float = math.inf
    """livekit's ``load_threshold``: the worker declines jobs at this load."""
    report_load: bool = False
    """Whether the worker reports its load (the machine's CPU) to the server, which sends
    no job to a worker at load 1 or above its ``agents.target_load`` (0.7); else it
    reports 0."""
    vad_turns: bool = False
    """bare only: turns end on the VAD's silence, without livekit's end-of-turn model (as
    clara_voice's turn detections do, except ``eot``)."""
    turn_detection: str | None = None
    """clara only: ``CLARA_TURN_DETECTION`` (None: clara_voice's default)."""

    @property
    def launcher(self) -> bool:
        """clara_voice needs bench/density_clara.py for this variant's options."""
        return self.executor is not None or self.load_threshold > 1 or not self.report_load

    @property
    def name(self) -> str:
        parts: list[str] = [self.kind]
        if self.executor:
            parts.append(self.executor)
        if self.idle is not None:
            parts.append(f"idle{self.idle}")
        if not self.prewarm:
            parts.append("noprewarm")
        if self.vad_turns:
            parts.append("vad")
        if self.turn_detection:
            parts.append(self.turn_detection)
        return "-".join(parts)

    def describe(self) -> dict[str, object]:
        return {
            "variant": self.name,
            "worker": "python -m clara_voice start"
            if self.kind == "clara" and not self.launcher
            else f"python -m bench.density_{self.kind} start",
            "job_executor": self.executor or "livekit default (process)",
            "num_idle_processes": self.idle
            if self.idle is not None
            else f"livekit default (the CPU count, {os.cpu_count()})",
            "prewarm": "VAD in prewarm" if self.prewarm else "VAD built in the job",
            "load_threshold": str(self.load_threshold),
            "load_reported": "the machine's CPU (livekit's)" if self.report_load else "0",
            "turn_detection": self.turn_detection or "clara_voice's default"
            if self.kind == "clara"
            else ("vad" if self.vad_turns else "livekit default (end-of-turn model)"),
        }


class Providers:
    """The loopback Deepgram and OpenAI (LLM, TTS) peers every worker talks to."""

    def __init__(self, openai: LoopbackOpenAI, deepgram: LoopbackDeepgram) -> None:
        self.openai = openai
        self.deepgram = deepgram


def _env(
    variant: Variant, server: LiveKitServer, providers: Providers, data: Path
) -> dict[str, str]:
    env = worker_env(
        url=server.url,
        api_key=server.api_key,
        api_secret=server.api_secret,
        http_port=free_port(),
        CLARA_DATA_DIR=str(data),
        CLARA_STT_PROVIDER="deepgram",
        CLARA_STT_BASE_URL=providers.deepgram.base_url,
        CLARA_LLM_BASE_URL=providers.openai.base_url,
        CLARA_TTS_BASE_URL=providers.openai.base_url,
    )
    env.pop("CLARA_NUM_IDLE_PROCESSES")  # worker_env's 1: the bench uses livekit's default
    env.pop("CLARA_LOAD_THRESHOLD")
    if not variant.report_load:
        env["BENCH_REPORT_LOAD"] = "0"
    threshold = str(variant.load_threshold)
    if variant.load_threshold <= 1:
        env["CLARA_LOAD_THRESHOLD"] = threshold
    else:
        env["BENCH_LOAD_THRESHOLD"] = threshold
    if variant.idle is not None:
        env["CLARA_NUM_IDLE_PROCESSES"] = str(variant.idle)
    env["PYTHONPATH"] = f"{ROOT}:{env['PYTHONPATH']}"
    if variant.turn_detection:
        env["CLARA_TURN_DETECTION"] = variant.turn_detection
    if variant.executor is not None:
        env["BENCH_JOB_EXECUTOR"] = variant.executor
    if variant.kind == "bare":
        env.update(
            BENCH_STT_URL=providers.deepgram.base_url,
            BENCH_OPENAI_URL=providers.openai.base_url,
            BENCH_HTTP_PORT=env["CLARA_HTTP_PORT"],
            BENCH_LOAD_THRESHOLD=threshold,
            BENCH_PREWARM="1" if variant.prewarm else "0",
        )
        if variant.vad_turns:
            env["BENCH_TURN_DETECTION"] = "vad"
        if variant.idle is not None:
            env["BENCH_NUM_IDLE_PROCESSES"] = str(variant.idle)
    return env


def _command(variant: Variant) -> list[str]:
    if variant.kind == "bare":
        return [sys.executable, "-m", "bench.density_bare", "start"]
    if variant.launcher:
        return [sys.executable, "-m", "bench.density_clara", "start"]
    return [sys.executable, "-m", "clara_voice", "start"]


def registered(line: LogLine) -> bool:
    """clara_voice's ``event`` or livekit's ``message``: the worker registered."""
    return "registered worker" in (line.get("event"), line.get("message"))


def says(line: LogLine, text: str) -> bool:
    return any(text in str(line.get(key, "")) for key in ("event", "message"))


@asynccontextmanager
async def running(
    variant: Variant, server: LiveKitServer, providers: Providers, workdir: Path
) -> AsyncIterator[WorkerProcess]:
    """The variant's worker, registered with ``server``; killed with its group on exit."""
    data = workdir / f"data-{variant.name}"
    env = _env(variant, server, providers, data)
    async with running_worker(env, ROOT, _command(variant)) as worker:
        await worker.wait_line(registered, "saying it registered", timeout=STARTUP_TIMEOUT)
        yield worker


def _busy(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


async def settle(
    root: psutil.Process, *, most: int | None = None, bound: float = SETTLE_TIMEOUT
) -> int:
    """Wait until ``root``'s tree has kept the same processes (at most ``most`` of them)
    for :data:`SETTLE_QUIET` seconds, using less than :data:`SETTLE_CPU` cores on average
    (warm processes started, jobs ended), or ``bound`` seconds; how many processes it then
    has. Sampled every 0.5 s: a process tree has no event for "quiet"."""
    started = time.monotonic()
    members = tree(root)
    quiet: tuple[set[int], float, float] | None = None  # pids, since, CPU seconds then
    while time.monotonic() - started < bound:
        await asyncio.sleep(0.5)
        members = tree(root)
        pids = {p.pid for p in members}
        now, busy = time.monotonic(), _busy(members)
        if quiet is None or quiet[0] != pids or (most is not None and len(pids) > most):
            quiet = (pids, now, busy)
            continue
        if now - quiet[1] >= SETTLE_QUIET:
            if (busy - quiet[2]) / (now - quiet[1]) < SETTLE_CPU:
                break
            quiet = (pids, now, busy)
    return len(members)


__all__ = ["Providers", "Variant", "registered", "running", "says", "settle"]
