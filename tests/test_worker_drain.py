"""SIGTERM's drain: the worker waits for its running jobs, however they end."""

from __future__ import annotations

import asyncio

import pytest

from clara_voice.config import Settings
from clara_voice.worker import ClaraWorker

SPIN = 1000
"""Joins of one ended process that only a drain spinning without yielding reaches."""


class EndedJobProcess:
    """A job process that has just ended, as livekit's pool holds it: its ``join()`` returns
    at once, and the pool's own task drops it a few loop turns later."""

    def __init__(self, pool: list[EndedJobProcess]) -> None:
        self.running_job = object()
        self.joins = 0
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, loop.call_soon, pool.remove, self)

    async def join(self) -> None:
        self.joins += 1
        if self.joins > SPIN:
            raise RuntimeError("the drain spins on a process that has ended")


class Pool:
    def __init__(self) -> None:
        self.processes: list[EndedJobProcess] = []


def draining_worker(settings: Settings, pool: Pool, monkeypatch: pytest.MonkeyPatch) -> ClaraWorker:
    """A worker whose job processes are ``pool``'s; what it would tell the server (that it
    is full) goes nowhere."""
    worker = ClaraWorker(settings)
    worker._proc_pool = pool  # type: ignore[assignment]

    async def status_to_nowhere() -> None:
        pass

    monkeypatch.setattr(worker, "_update_worker_status", status_to_nowhere)
    worker._job_lifecycle_tasks = set()  # what `run` starts with
    return worker


async def test_two_jobs_ending_together_end_the_drain(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (issue 17, rolling restart): livekit's drain awaited ``proc.join()`` in a
    loop that never yielded while an ended process was still in the pool, so when the
    server closed a draining worker's empty rooms together it spun at 100 % CPU and never
    exited."""
    pool = Pool()
    worker = draining_worker(settings, pool, monkeypatch)
    pool.processes += [EndedJobProcess(pool.processes), EndedJobProcess(pool.processes)]
    ended = list(pool.processes)
    await asyncio.wait_for(worker.drain(), 5)
    assert worker.draining and pool.processes == []
    assert all(p.joins < 10 for p in ended)


async def test_the_drain_gives_up_after_its_bound(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that outlives ``CLARA_DRAIN_TIMEOUT`` ends the wait (livekit then closes it)."""

    class Endless:
        running_job = object()

        async def join(self) -> None:
            await asyncio.Event().wait()

    pool = Pool()
    pool.processes.append(Endless())  # type: ignore[arg-type]
    worker = draining_worker(settings, pool, monkeypatch)
    with pytest.raises(TimeoutError):
        await worker.drain(timeout=1)
