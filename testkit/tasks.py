"""Waiting for the asyncio work a test started, and seeing what is left of it."""

from __future__ import annotations

import asyncio

_EVENT_WORK = ("clara.join.", "clara.leave.", "clara.cleanup.", "clara.pipeline_start.")


def other_tasks() -> set[asyncio.Task[object]]:
    """Every task of the loop except the test's own."""
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


async def settle(*, timeout: float = 2.0) -> None:
    """Wait until the work the agent spawned for room events has finished (long-lived tasks
    such as the outbox writer keep running)."""
    async with asyncio.timeout(timeout):
        while pending := {t for t in other_tasks() if t.get_name().startswith(_EVENT_WORK)}:
            await asyncio.wait(pending)


class Stubborn:
    """Work that ignores being cancelled until it is released (a close that never ends:
    an answer the server never sends, a provider that never lets go)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancels = 0
        self.tasks: list[asyncio.Task[object]] = []

    async def run(self) -> None:
        if (task := asyncio.current_task()) is not None:
            self.tasks.append(task)
        self.started.set()
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancels += 1

    async def finish(self) -> None:
        """Let every run end (a test's own cleanup: nothing is left running)."""
        self.release.set()
        await asyncio.gather(*self.tasks)
