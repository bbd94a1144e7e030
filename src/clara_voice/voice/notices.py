"""Notices: what the agent tells one participant about its own input, and the log lines
about refused input, both rate-limited.

A refusal (a chat message too long or too fast, a room without a free place, a stream
clara does not read) is answered with a reliable data packet on topic ``clara.notice``
addressed to its sender only (docs/client-protocol.md)::

    {"v": 1, "type": "refused", "input": "lk.chat", "error": "too_long", "message": "…"}

A hostile participant can make refusals as fast as it can send, so the refusals cost
little themselves: each sender gets at most ``NOTICE_BURST`` notices at once, then
``NOTICE_PER_SECOND`` (the rest are counted, not sent), the room at most
``ROOM_NOTICE_BURST``/``ROOM_NOTICE_PER_SECOND`` in all, and refusals are logged at most
``LOG_BURST`` at once, then ``LOG_PER_SECOND``, across every sender, the next line saying
how many were not logged.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from livekit.agents.utils import aio

from clara_voice._ratelimit import RateLimits, TokenBucket
from clara_voice.logging import ContextLogger

NOTICE_TOPIC = "clara.notice"
"""Data topic of the notices the agent sends a participant about its own input."""
NOTICE_BURST, NOTICE_PER_SECOND = 5.0, 1.0
ROOM_NOTICE_BURST, ROOM_NOTICE_PER_SECOND = 50.0, 20.0
LOG_BURST, LOG_PER_SECOND = 20.0, 2.0
MAX_PENDING_SENDS = 64
"""Notices being sent at once; past it a notice is dropped (counted), never queued."""


class RefusalLog:
    """Logs refusals with a budget shared by every sender: a flood is one line a second
    or so, each saying how many refusals went unlogged before it."""

    def __init__(self, log: ContextLogger, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._budget = TokenBucket(capacity=LOG_BURST, rate=LOG_PER_SECOND, clock=clock)
        self.unlogged = 0

    def refused(self, message: str, *, participant: str, **extra: Any) -> None:
        if not self._budget.take():
            self.unlogged += 1
            return
        fields = {"participant": participant[:128], **extra}
        if self.unlogged:
            fields["unlogged_refusals"] = self.unlogged
            self.unlogged = 0
        self._log.warning(message, extra=fields)


class Notices:
    """Sends ``clara.notice`` refusals from the agent in ``room``; see the module."""

    def __init__(
        self, room: Any, log: ContextLogger, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._room = room
        self._log = log
        self._per_sender = RateLimits(capacity=NOTICE_BURST, rate=NOTICE_PER_SECOND, clock=clock)
        self._room_budget = TokenBucket(
            capacity=ROOM_NOTICE_BURST, rate=ROOM_NOTICE_PER_SECOND, clock=clock
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.refusals = RefusalLog(log, clock=clock)
        self.sent: Counter[str] = Counter()
        """Notices sent, by error code."""
        self.dropped = 0
        """Notices not sent: over a budget, or too many being sent at once."""

    def refuse(self, identity: str, *, input: str, error: str, message: str) -> None:
        """Tell ``identity`` that its ``input`` was refused (``error``, a code; ``message``,
        for a person), within the budgets."""
        if (
            self._closed
            or len(self._tasks) >= MAX_PENDING_SENDS
            or not self._per_sender.admit(identity)
            or not self._room_budget.take()
        ):
            self.dropped += 1
            return
        notice = {"v": 1, "type": "refused", "input": input, "error": error, "message": message}
        payload = json.dumps(notice, separators=(",", ":"))
        self.sent[error] += 1
        self._spawn(self._send(identity, payload))

    async def aclose(self) -> None:
        """Stop sending; safe to call twice."""
        self._closed = True
        await aio.cancel_and_wait(*self._tasks)

    async def _send(self, identity: str, payload: str) -> None:
        try:
            await self._room.local_participant.publish_data(
                payload, reliable=True, destination_identities=[identity], topic=NOTICE_TOPIC
            )
        except Exception as exc:
            self._log.warning(
                "could not send a notice", extra={"participant": identity[:128]}, exc_info=exc
            )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name="clara.notice")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


__all__ = ["NOTICE_TOPIC", "Notices", "RefusalLog"]
