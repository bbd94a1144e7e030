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
