"""ClosePlan: how a room job's agent closes within ``CLARA_JOB_SHUTDOWN_TIMEOUT``.

The agent closes in livekit's ``on_session_end`` hook, which livekit waits for at most its
``session_end_timeout`` (:func:`clara_voice._closing.session_end_timeout`, set by the
worker a little below the job's shutdown timeout). A :class:`ClosePlan` gives the close a
deadline below that (:func:`close_budget`) and bounds every step by it, hard
(:func:`~clara_voice._closing.within`: cancel, wait, log what did not finish, go on):

1. the agent's own tasks (health checks, pipeline rebuilds, joins still starting) are
   stopped, each given ``CANCEL_GRACE``;
2. the sessions close together, for as long as the deadline leaves once the steps after
   them are provided for (their last sync events, ``FLUSH_TIMEOUT``; the outbox's flush,
   ``CLARA_OUTBOX_FLUSH_TIMEOUT``), and never less than ``MIN_SESSIONS_CLOSE``; a cleanup
   still running then is cancelled (its summary is written as it unwinds);
3. each later step (session sync, the pipelines' shared parts, the room surface, the
   conversation and its outbox) gets what is left of the deadline, at least ``MIN_STEP``.

A ``CLARA_JOB_SHUTDOWN_TIMEOUT`` shorter than these minimums and the margins (about 8 s)
leaves the close less than it may need: then the worker's backstop cuts it short.

A cancelled step still closes (each one's ``finally`` releases what it holds); a step
that does not end even when cancelled is left behind, named in a warning, and the job
ends all the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Coroutine, Iterable
from typing import Any

from clara_voice._closing import CANCEL_GRACE, cancel_within, session_end_timeout, within
from clara_voice.config import Settings
from clara_voice.logging import ContextLogger
from clara_voice.sync.service import FLUSH_TIMEOUT

MIN_SESSIONS_CLOSE = 1.0
"""Seconds the sessions get to close however short the budget."""
MIN_STEP = 0.5
"""Seconds each later step gets however short the budget."""

Task = asyncio.Future[Any]


def close_budget(settings: Settings) -> float:
    """Seconds the agent's close plans for: livekit's bound on it, less a grace for a step
    cut short at the deadline to unwind, one for :func:`backstop`'s, and one to spare."""
    return max(session_end_timeout(settings.job_shutdown_timeout) - 3 * CANCEL_GRACE, 0.0)


def backstop(settings: Settings) -> float:
    """Seconds the worker waits for the agent's close before cutting it short: past the
    close's own deadline, and with the grace it then gets to unwind, a grace before
    livekit stops waiting for it."""
    return close_budget(settings) + CANCEL_GRACE


class ClosePlan:
    """The deadline of one agent's close, and its steps bounded by it."""

    def __init__(self, settings: Settings, log: ContextLogger) -> None:
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + close_budget(settings)
        self._after_sessions = FLUSH_TIMEOUT + settings.outbox_flush_timeout

    def left(self, *, keep: float = 0.0) -> float:
        """Seconds left until the deadline, less ``keep`` (none below zero)."""
        return max(self._deadline - keep - self._loop.time(), 0.0)

    async def step(
        self, work: Coroutine[Any, Any, object], what: str, *, limit: float | None = None
    ) -> bool:
        """Run one step of the close for ``limit`` seconds, or for what is left of the
        deadline but at least ``MIN_STEP`` (a step due at the deadline still does its quick
        work); ``True`` when it finished. Raises what the step raised."""
        limit = max(self.left(), MIN_STEP) if limit is None else limit
        return await within(work, limit, what=what, log=self._log)

    async def stop(self, tasks: Iterable[Task], what: str) -> None:
        """Cancel ``tasks``; those that do not end within ``CANCEL_GRACE`` are left behind."""
        await cancel_within(tasks, what=what, log=self._log)

    async def sessions(self, cleanups: Collection[Task]) -> set[Task]:
        """Wait for the sessions' cleanups while the deadline allows, then cancel the late
        ones (given ``CANCEL_GRACE`` to write their summaries); the ones that finished."""
        if not cleanups:
            return set()
        limit = max(self.left(keep=self._after_sessions), MIN_SESSIONS_CLOSE)
        done, late = await asyncio.wait(cleanups, timeout=limit)
        if late:  # their summaries are written as they unwind (cleanup_session's finally)
            self._log.warning("sessions did not close in time", extra={"sessions": len(late)})
            left = await cancel_within(late, what="session cleanups", log=self._log, limit=limit)
            done |= late - left
        return done


__all__ = [
    "MIN_SESSIONS_CLOSE",
    "MIN_STEP",
    "ClosePlan",
    "backstop",
    "close_budget",
]
