"""CPU and memory of process trees over a window, for bench/density.py (psutil).

A :class:`TreeMeter` follows a root process and all its descendants (the worker, its
forkserver, its job processes; or one livekit-server), re-listing the tree every
``interval`` seconds. Over a window it sums each process's CPU time (user + system)
accrued inside the window: a process already running when the window opens counts from its
CPU time then, one started inside the window from zero, one that exits inside it up to
its last sample (at most ``interval`` of CPU lost). Memory is sampled every
``memory_interval`` seconds as the sum over the tree of RSS, PSS and USS
(``/proc/PID/smaps_rollup``); the window reports the largest sums seen. PSS divides each
shared page between the processes mapping it, so the sum of PSS is what the tree costs
the machine; the sum of RSS counts the pages a forkserver shares with its children once
per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import psutil  # type: ignore[import-untyped]

MB = 1024 * 1024


@dataclass
class Usage:
    """What a tree used over one window."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    rss_mb: float = 0.0
    pss_mb: float = 0.0
    uss_mb: float = 0.0
    processes: int = 0

    @property
    def cores(self) -> float:
        """CPU used, in cores (1.0: one core busy the whole window)."""
        return self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Window:
    started: float
    started_wall: float
    baseline: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)


def tree(root: psutil.Process) -> list[psutil.Process]:
    """``root`` and its live descendants (none when ``root`` has exited)."""
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cpu(process: psutil.Process) -> float | None:
    try:
        times = process.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return float(times.user + times.system)


class TreeMeter:
    """CPU and memory of ``root``'s process tree over windows (``with meter.window()``)."""

    def __init__(
        self, root: psutil.Process, *, interval: float = 0.5, memory_interval: float = 2.0
    ) -> None:
        self.root = root
        self.interval = interval
        self.memory_interval = memory_interval
        self._window: _Window | None = None
        self._created: dict[int, float] = {}

    def _sample_cpu(self, window: _Window) -> None:
        for process in tree(self.root):
            cpu = _cpu(process)
            if cpu is None:
                continue
            pid = process.pid
            if pid not in window.baseline:
                created = self._create_time(process)
                window.baseline[pid] = 0.0 if created >= window.started_wall else cpu
            window.last[pid] = cpu

    def _create_time(self, process: psutil.Process) -> float:
        if process.pid not in self._created:
            try:
                self._created[process.pid] = process.create_time()
            except psutil.Error:
                self._created[process.pid] = 0.0
        return self._created[process.pid]

    def memory(self) -> tuple[float, float, float, int]:
        """(RSS, PSS, USS) summed over the tree now, in MB, and the number of processes."""
        rss = pss = uss = 0.0
        count = 0
        for process in tree(self.root):
            try:
                info = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            count += 1
            rss += info.rss
            pss += getattr(info, "pss", 0.0)
            uss += info.uss
        return rss / MB, pss / MB, uss / MB, count

    def _sample_memory(self, window: _Window) -> None:
        rss, pss, uss, count = self.memory()
        usage = window.usage
        usage.rss_mb = max(usage.rss_mb, rss)
        usage.pss_mb = max(usage.pss_mb, pss)
        usage.uss_mb = max(usage.uss_mb, uss)
        usage.processes = max(usage.processes, count)

    async def _follow(self, window: _Window, memory: bool) -> None:
        next_memory = 0.0
        while True:
            self._sample_cpu(window)
            if memory and time.monotonic() >= next_memory:
                self._sample_memory(window)
                next_memory = time.monotonic() + self.memory_interval
            await asyncio.sleep(self.interval)  # a sampling period: psutil has no events

    @contextlib.asynccontextmanager
    async def window(self, *, memory: bool = True) -> AsyncIterator[Usage]:
        """Measure while the block runs; the :class:`Usage` is complete when it exits."""
        window = _Window(started=time.monotonic(), started_wall=time.time())
        self._sample_cpu(window)
        task = asyncio.create_task(self._follow(window, memory), name="density.tree_meter")
        try:
            yield window.usage
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._sample_cpu(window)
            if memory:
                self._sample_memory(window)
            window.usage.seconds = time.monotonic() - window.started
            window.usage.cpu_seconds = sum(
                window.last[pid] - base for pid, base in window.baseline.items()
            )


class MachineMeter:
    """The whole machine's busy CPU (all processes, ours or not) over a window, in cores."""

    def __init__(self) -> None:
        self._start: tuple[float, float] | None = None

    @staticmethod
    def _busy() -> tuple[float, float]:
        times = psutil.cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        return sum(times) - idle, time.monotonic()

    @contextlib.contextmanager
    def window(self) -> Iterator[list[float]]:
        """Yields a list that holds the busy cores once the block exits."""
        busy0, t0 = self._busy()
        result: list[float] = []
        try:
            yield result
        finally:
            busy1, t1 = self._busy()
            result.append((busy1 - busy0) / (t1 - t0) if t1 > t0 else 0.0)


def children_named(name: str) -> list[psutil.Process]:
    """This process's descendants whose name starts with ``name`` (e.g. livekit-server)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.name().startswith(name[:15]):  # /proc's comm is cut at 15 characters
                found.append(child)
    return found


__all__ = ["MB", "MachineMeter", "TreeMeter", "Usage", "children_named", "tree"]
