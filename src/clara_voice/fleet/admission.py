"""Admission: which room jobs this worker takes, by its own capacity (seed 002, issue 17).

The worker's load (:mod:`clara_voice.fleet.load`) is its own: its process tree's CPU
against the cores it is given, its sessions against ``CLARA_MAX_SESSIONS``, or full while
one of its agents fails its health check. Its agents report their health and sessions in
the shared metrics folder (:mod:`clara_voice.telemetry`); :meth:`Admission.run` reads them
every ``AGENTS_POLL`` seconds, dropping the share of processes that ended. Every job the
worker declines is logged once, with why, and counted (``clara_jobs_declined_total``); the
load is exported as ``clara_worker_load``.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
from livekit.agents.utils import aio
from prometheus_client import multiprocess

from clara_voice import telemetry
from clara_voice.fleet.load import WorkerLoad
from clara_voice.logging import ContextLogger

AGENTS_POLL = 2.0
"""Seconds between the worker's reads of its agents' health and sessions."""


class Admission:
    """The load a worker reports and what it says about the jobs it declines."""

    def __init__(
        self,
        *,
        max_sessions: int,
        threshold: float | None,
        log: ContextLogger,
        jobs: Callable[[], list[str]] = list,
    ) -> None:
        """``jobs``: the ids of the room jobs the worker runs now. A job whose agent has not
        started yet holds a session before its agent can say so."""
        self._log = log
        self._jobs = jobs
        self.threshold = threshold
        """``CLARA_LOAD_THRESHOLD`` (``None``: livekit's default for the mode)."""
        self.unhealthy_agents = 0
        self.active_sessions = 0
        self.running_agents = 0
        """Agents that had started at the last poll (their sessions are in the count)."""
        self.load = WorkerLoad(
            max_sessions=max_sessions,
            sessions=self._sessions,
            unhealthy=lambda: self.unhealthy_agents,
        )

    def _sessions(self) -> int:
        """The agents' sessions, and one for each job whose agent has not started: on a busy
        machine a job process takes seconds to start its agent, and a burst of rooms must
        not overfill the worker meanwhile. A started agent whose people left holds none."""
        return self.active_sessions + max(0, len(self._jobs()) - self.running_agents)

    def read(self) -> float:
        """The worker's load now (livekit's ``load_fnc``; it runs on a thread)."""
        value = self.load.read()
        telemetry.worker_load().set(value)
        return value

    def declined(
        self, job: Any, *, draining: bool, threshold: float, effective: float, starting: int
    ) -> None:
        """The worker declined ``job`` (livekit's AvailabilityRequest job): said and counted.
        ``effective``: the load with the ``starting`` jobs it accepted and has not launched."""
        reason = "draining" if draining else "full"
        last = self.load.last
        if draining:
            why = "the worker is draining (SIGTERM)"
        elif last.value < threshold <= effective:
            why = (
                f"{starting} room job(s) it accepted are still starting "
                f"(load {effective:.2f} with them ≥ CLARA_LOAD_THRESHOLD {threshold:g})"
            )
        else:
            why = (
                last.why(threshold)
                + f" (load {last.value:.2f} ≥ CLARA_LOAD_THRESHOLD {threshold:g})"
            )
        telemetry.JOBS_DECLINED.labels(reason=reason).inc()
        self._log.warning(
            f"room job declined: {why}",
            extra={"job_id": job.id, "room": job.room.name, "reason": reason},
        )

    def set_agents(self, *, unhealthy: int, sessions: int, running: int) -> None:
        """What the agents report: ``unhealthy`` fail their health check, ``sessions`` held,
        ``running`` have started."""
        was, self.unhealthy_agents = self.unhealthy_agents, unhealthy
        self.active_sessions = sessions
        self.running_agents = running
        if bool(was) == bool(unhealthy):
            return
        if unhealthy:
            self._log.warning(
                "worker takes no new jobs: agents fail their health check",
                extra={"unhealthy_agents": unhealthy},
            )
        else:
            self._log.info("agents pass their health check again, the worker takes new jobs")

    async def check_agents(self, metrics_dir: Path) -> int:
        """Read the agents' health and sessions (dropping the gauges of ended processes
        first); how many are unhealthy."""

        def read() -> telemetry.AgentsFigures:
            sweep_dead_processes(metrics_dir)
            return telemetry.agents_figures(metrics_dir)

        figures = await asyncio.to_thread(read)
        self.set_agents(
            unhealthy=figures.unhealthy, sessions=figures.sessions, running=figures.running
        )
        return figures.unhealthy

    async def run(self, metrics_dir: Path) -> None:
        """Read the agents every ``AGENTS_POLL`` seconds until cancelled."""
        ticker = aio.interval(AGENTS_POLL)
        await ticker.tick()  # at once: the first read waits one period, for livekit's cleanup
        failing = False
        while True:
            await ticker.tick()
            try:
                await self.check_agents(metrics_dir)
            except Exception as exc:
                if not failing:  # once per streak of failures, not every period
                    self._log.error(
                        "could not read the agents' health",
                        exc_info=exc,
                        extra={"path": str(metrics_dir)},
                    )
                failing = True
            else:
                failing = False


_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def sweep_dead_processes(directory: str | os.PathLike[str]) -> list[int]:
    """Drop the live gauges of processes that ended (``mark_process_dead``); their pids.

    A job process that crashed or was killed never takes its share back; without this its
    last values (an unhealthy agent, its sessions) would count forever. Blocking file I/O.
    """
    if not os.path.isdir(directory):
        return []  # not made yet (livekit makes an operator's folder when it starts)
    pids: set[int] = set()
    for path in Path(directory).iterdir():
        if (match := _LIVE_FILE.match(path.name)) is not None:
            pids.add(int(match.group(1)))
    dead = sorted(pid for pid in pids if pid != os.getpid() and not psutil.pid_exists(pid))
    for pid in dead:
        multiprocess.mark_process_dead(pid, os.fspath(directory))  # type: ignore[no-untyped-call]
    return dead


__all__ = ["AGENTS_POLL", "Admission", "sweep_dead_processes"]
