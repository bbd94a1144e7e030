"""The worker's load as LiveKit sees it: its own capacity used, never the machine's.

livekit's default load is the whole machine's CPU, so a worker on a machine that other
programs keep busy declines every job, and a room whose job it declined stays without
Clara. clara reports its own load instead (:class:`WorkerLoad`), the largest of:

- **CPU**: the CPU time its own process tree used (the worker, its forkserver and job
  processes: :class:`TreeCPU`) over the last ``WINDOW`` seconds, against the cores it is
  given (:func:`allotted_cores`: its cgroup's CPU quota, else the CPUs it may run on);
- **sessions**: the sessions its jobs hold against ``CLARA_MAX_SESSIONS``;
- **trouble**: 1.0 while any of its agents fails its health check.

LiveKit sends new jobs only to workers under ``CLARA_LOAD_THRESHOLD``. What the load
means and how to size it: docs/operations.md#admission.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]

WINDOW = 2.5
"""Seconds the CPU share is averaged over (livekit's own measure uses 2.5 s too)."""
MIN_SPAN = 0.4
"""Seconds of samples before the share means anything (livekit reads the load every 0.5 s,
and again before every job offer: two reads a few ms apart are noise)."""
CGROUP_ROOT = Path("/sys/fs/cgroup")


def allotted_cores(root: Path = CGROUP_ROOT) -> float:
    """The CPUs this process is given: its cgroup's quota (``cpu.max``, or v1's
    ``cpu.cfs_quota_us``) when there is one, at most the CPUs it may run on."""
    cpus = float(len(os.sched_getaffinity(0)))
    quota = _cgroup_quota(root)
    return min(cpus, quota) if quota is not None else cpus


def _cgroup_quota(root: Path) -> float | None:
    try:
        text = (root / "cpu.max").read_text().split()
        if len(text) == 2 and text[0] != "max":
            return max(int(text[0]) / int(text[1]), 0.01)
        return None
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(quota / period, 0.01) if quota > 0 and period > 0 else None


class TreeCPU:
    """The share of its allotted cores that a process tree used over the last ``WINDOW``
    seconds (0 to 1)."""

    def __init__(
        self,
        pid: int | None = None,
        *,
        cores: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._root = psutil.Process(pid if pid is not None else os.getpid())
        self.cores = cores if cores is not None else allotted_cores()
        self._clock = clock
        self._seen: dict[tuple[int, float], float] = {}
        """(pid, create time) → CPU seconds it had used at the last sample."""
        self._last_wall: float | None = None
        """When the last sample was taken (the epoch clock processes are born by)."""
        self._samples: deque[tuple[float, float]] = deque()
        """(time, CPU seconds used since the previous sample)."""

    def sample(self) -> float:
        """Take a sample; the share over the window."""
        now, wall = self._clock(), time.time()
        used, seen = 0.0, {}
        for process in self._tree():
            try:
                with process.oneshot():
                    key = (process.pid, process.create_time())
                    times = process.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            total = times.user + times.system
            seen[key] = total
            if key in self._seen:
                used += total - self._seen[key]
            elif self._last_wall is not None and key[1] > self._last_wall:
                used += total  # born since the last sample: all it used is new
            # else: first seen now (the first sample, or it joined the tree): its baseline
        self._seen, self._last_wall = seen, wall
        self._samples.append((now, max(used, 0.0)))
        while len(self._samples) > 1 and now - self._samples[1][0] >= WINDOW:
            self._samples.popleft()
        return self.share()

    def share(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        span = self._samples[-1][0] - self._samples[0][0]
        if span < MIN_SPAN:  # a few ms of CPU over a few ms says nothing
            return 0.0
        used = sum(cpu for _, cpu in list(self._samples)[1:])
        return min(used / (span * self.cores), 1.0)

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


@dataclass(frozen=True, kw_only=True)
class LoadReading:
    """One reading of the worker's load and what made it."""

    cpu: float
    sessions: int
    max_sessions: int
    unhealthy_agents: int

    @property
    def value(self) -> float:
        trouble = 1.0 if self.unhealthy_agents else 0.0
        return max(self.cpu, self.sessions / self.max_sessions, trouble)

    def why(self, threshold: float) -> str:
        """Why a worker with this reading takes no new job at ``threshold``."""
        if self.unhealthy_agents:
            return f"{self.unhealthy_agents} agent(s) fail their health check"
        if self.sessions / self.max_sessions >= threshold:
            return f"{self.sessions} sessions of CLARA_MAX_SESSIONS={self.max_sessions}"
        return f"its processes use {self.cpu:.0%} of the CPU it is given"


class WorkerLoad:
    """The load a ClaraWorker reports; ``sessions`` and ``unhealthy`` read its agents."""

    def __init__(
        self,
        *,
        max_sessions: int,
        sessions: Callable[[], int],
        unhealthy: Callable[[], int],
        cpu: TreeCPU | None = None,
    ) -> None:
        self.max_sessions = max_sessions
        self._sessions = sessions
        self._unhealthy = unhealthy
        self._cpu = cpu
        self.last = LoadReading(cpu=0.0, sessions=0, max_sessions=max_sessions, unhealthy_agents=0)

    def read(self) -> float:
        """A fresh reading (livekit calls this on a thread every 0.5 s and before every
        job offer); its value."""
        if self._cpu is None:
            self._cpu = TreeCPU()
        cpu = self._cpu.sample()
        self.last = LoadReading(
            cpu=0.0 if math.isnan(cpu) else cpu,
            sessions=self._sessions(),
            max_sessions=self.max_sessions,
            unhealthy_agents=self._unhealthy(),
        )
        return self.last.value


def default_max_sessions(cores: float | None = None) -> int:
    """Sessions a worker takes by default: 5 per allotted core (one conversation costs
    about 0.13 of a core: docs/benchmarks.md#density-through-the-real-server), at least 2."""
    return max(2, math.floor(5 * (cores if cores is not None else allotted_cores())))


__all__ = [
    "WINDOW",
    "LoadReading",
    "TreeCPU",
    "WorkerLoad",
    "allotted_cores",
    "default_max_sessions",
]
