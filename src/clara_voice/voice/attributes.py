"""AgentAttributes: the one writer of the agent's participant attributes in a room.

Everything clara says through the agent's attributes goes through here: each session's
config (``clara.session.<identity>``, written by session sync), each conversation's state
(``clara.agent_state.<identity>``) and livekit's ``lk.agent.state``. Writers set keys and
return at once; one owned task writes them:

- coalesced: at most one ``set_attributes`` call every ``interval`` seconds, carrying the
  latest value of every key changed since the last one; an empty value removes the key;
- only what differs from what the room already has;
- within a byte budget (``MAX_ATTRIBUTES_BYTES`` for keys and values together, half of what
  LiveKit allows a participant): a value that would go over it is refused, said once per
  key, and counted;
- while the agent's own link is down, writing waits, and goes on once it is back; a
  failed write is tried again after ``RETRY_INTERVAL`` seconds, or with the next change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable

from livekit import rtc
from livekit.agents.utils import aio

from clara_voice.logging import ContextLogger

MAX_ATTRIBUTES_BYTES = 32 * 1024
"""Budget for the agent's attributes (LiveKit allows 64 KiB for all of a participant's)."""
RETRY_INTERVAL = 2.0
"""Seconds before a failed write is tried again (sooner when another change comes)."""


class AgentAttributes:
    """Writes the agent's attributes in ``room``; see the module docstring."""

    def __init__(
        self,
        room: rtc.Room,
        *,
        log: ContextLogger,
        interval: float = 0.5,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self._room = room
        self._log = log
        self._interval = interval
        self._on_error = on_error
        self._dirty: dict[str, str] = {}
        self._written: dict[str, str] = {}
        self._sizes: dict[str, int] = {}
        self._total_size = 0
        """The sum of ``_sizes`` (kept, not summed at every call)."""
        self._over_budget: set[str] = set()
        self._last_write = -float("inf")
        self._link_up = asyncio.Event()
        self._link_up.set()
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._write_atask: asyncio.Task[None] | None = None
        self._retry = False
        self._closed = False
        self.refused: Counter[str] = Counter()
        """Values refused for the budget, by key prefix."""

    @property
    def written(self) -> dict[str, str]:
        """What the room has of the agent's attributes, as far as this writer knows."""
        return dict(self._written)

    def start(self) -> None:
        """Start the writing task; idempotent."""
        if self._write_atask is None and not self._closed:
            self._write_atask = asyncio.create_task(self._run(), name="clara.agent_attributes")

    async def aclose(self) -> None:
        """Stop writing and forget what is pending; safe to call twice."""
        self._closed = True
        if self._write_atask is not None:
            await aio.cancel_and_wait(self._write_atask)
        self._dirty.clear()
        self._drained.set()

    def link(self, *, up: bool) -> None:
        """The agent's own link went up or down: writing goes on or waits."""
        if up:
            self._link_up.set()
            self._wakeup.set()
        else:
            self._link_up.clear()

    def set(self, key: str, value: str) -> bool:
        """Set ``key`` to ``value`` ("" removes it); ``False`` when it is over the budget
        (the room keeps what it had)."""
        if self._closed:
            return False
        if key not in self._dirty and self._written.get(key, "") == value:
            return True  # the room has it already (and its size is counted)
        size = len(key.encode()) + len(value.encode())
        others = self._total_size - self._sizes.get(key, 0)
        if value and others + size > MAX_ATTRIBUTES_BYTES:
            self.refused[key.rpartition(".")[0] or key] += 1
            if key not in self._over_budget:  # said once, not at every change
                self._over_budget.add(key)
                self._log.warning("agent attributes over budget, not published", extra={"key": key})
            return False
        self._over_budget.discard(key)
        self._total_size -= self._sizes.pop(key, 0)
        if value:
            self._sizes[key] = size
            self._total_size += size
        self._dirty[key] = value
        self._drained.clear()
        self._wakeup.set()
        return True

    async def drain(self) -> None:
        """Wait until everything set has been written (callers bound the wait)."""
        while not self._drained.is_set():
            await self._drained.wait()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._retry:  # a failed write is tried again, or sooner with the next change
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RETRY_INTERVAL):
                        await self._wakeup.wait()
                self._retry = False
            else:
                await self._wakeup.wait()
            self._wakeup.clear()
            await self._link_up.wait()
            if self._dirty:
                wait = self._interval - (loop.time() - self._last_write)
                if wait > 0:
                    await asyncio.sleep(wait)  # a few updates a second at most
                    self._wakeup.set()
                    continue
                changes, self._dirty = self._dirty, {}
                changes = {k: v for k, v in changes.items() if self._written.get(k, "") != v}
                if changes:
                    self._last_write = loop.time()
                    await self._write(changes)
            if not self._retry and not self._dirty and not self._wakeup.is_set():
                self._drained.set()

    async def _write(self, changes: dict[str, str]) -> None:
        try:
            await self._room.local_participant.set_attributes(changes)
        except Exception as exc:
            self._on_error()
            self._log.warning("failed to publish the agent's attributes", exc_info=exc)
            for key, value in changes.items():
                self._dirty.setdefault(key, value)
            self._retry = True
            self._drained.set()  # nothing more to do until the retry: drain() returns
            return
        for key, value in changes.items():
            if value:
                self._written[key] = value
            else:
                self._written.pop(key, None)


__all__ = ["MAX_ATTRIBUTES_BYTES", "AgentAttributes"]
