"""How long an event loop was unavailable, for the benchmarks that measure it."""

from __future__ import annotations

import asyncio


class StallMeter:
    """The largest lateness of a periodic ``tick``-second sleep on the running loop: how
    long the loop was unavailable (``with StallMeter(0.005) as meter: …; meter.worst``)."""

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.tick
            await asyncio.sleep(self.tick)
            self.worst = max(self.worst, loop.time() - due)

    def __enter__(self) -> StallMeter:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()


__all__ = ["StallMeter"]
