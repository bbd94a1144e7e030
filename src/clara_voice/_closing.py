"""Bounded waits for closing things, and the time plan of a closing job.

A closing job waits for things outside its control: the room (once a room is deleted,
the server never answers an unpublish), the providers, the backend. Every such wait has
a bound, and the bound is hard. ``asyncio.wait_for`` is not one: past its timeout it
cancels the work and then waits, without limit, for the work to end, so work that
ignores or outlasts its cancellation holds the caller as long as it likes. Here
(livekit's aclose pattern: cancel, then wait with a timeout, then log what did not
finish):

- :func:`within` waits for some work up to a timeout, then cancels it and gives it
  :data:`CANCEL_GRACE` seconds to unwind (a cancelled close still closes); work still
  running then is logged by name and left behind, and the caller goes on;
- :func:`finish_within` does the same and raises :class:`TimeoutError` when the work did
  not finish;
- :func:`cancel_within` does the same for tasks that are only to be stopped.

The time plan, from ``CLARA_JOB_SHUTDOWN_TIMEOUT``: livekit waits for the job's
``on_session_end`` hook (the agent's close) for its ``session_end_timeout``, 300 s unless
told. The worker sets it to :func:`session_end_timeout`, :data:`EXIT_MARGIN` less than
the job's shutdown timeout, which leaves livekit time to disconnect the room and end the
process; the agent's close is bounded by clara below that (agent/closing.py), so
livekit's own wait never runs out, and a job ends within its shutdown timeout whatever
it was waiting for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any

from clara_voice.logging import ContextLogger

CANCEL_GRACE = 1.0
"""Seconds cancelled work gets to unwind before it is left behind."""
EXIT_MARGIN = 2.0
"""Seconds of ``CLARA_JOB_SHUTDOWN_TIMEOUT`` kept for what livekit does after the job's
``on_session_end``: disconnecting the room, the shutdown callbacks, ending the process."""


def session_end_timeout(job_shutdown_timeout: float) -> float:
    """livekit's bound on the job's ``on_session_end``: ``EXIT_MARGIN`` less than the job's
    shutdown timeout (half of it, for one shorter than twice the margin)."""
    return max(job_shutdown_timeout - EXIT_MARGIN, job_shutdown_timeout / 2)


async def within(
    work: Coroutine[Any, Any, object], limit: float, *, what: str, log: ContextLogger
) -> bool:
    """Run ``work`` for at most ``limit`` seconds; ``True`` when it finished in time.

    Past the limit it is cancelled and given ``CANCEL_GRACE`` seconds to unwind, said
    in a warning naming ``what``, and ``False`` comes back; if it is still running then,
    it is left behind. Raises what the work raised (also while unwinding). When the
    caller is cancelled, so is the work.
    """
    task = asyncio.create_task(work, name=f"clara.closing.{what.replace(' ', '_')}")
    try:
        await asyncio.wait({task}, timeout=max(limit, 0.0))
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task.done():
        task.result()
        return True
    left = await cancel_within([task], what=what, log=log, limit=limit)
    if not left and not task.cancelled() and (exc := task.exception()) is not None:
        raise exc
    return False


async def finish_within(
    work: Coroutine[Any, Any, object], limit: float, *, what: str, log: ContextLogger
) -> None:
    """As :func:`within`, raising :class:`TimeoutError` when ``work`` did not finish."""
    if not await within(work, limit, what=what, log=log):
        raise TimeoutError(f"{what}: not done within {limit} s")


async def cancel_within(
    tasks: Iterable[asyncio.Future[Any]],
    *,
    what: str,
    log: ContextLogger,
    limit: float | None = None,
) -> set[asyncio.Future[Any]]:
    """Cancel ``tasks`` and wait ``CANCEL_GRACE`` seconds for them to end; those still
    running are logged (``what``, their names) and left behind, and returned. ``limit``:
    the time they already had (then their cancellation is said too)."""
    pending = {task for task in tasks if not task.done()}
    if not pending:
        return set()
    for task in pending:
        task.cancel()
    _, left = await asyncio.wait(pending, timeout=CANCEL_GRACE)
    extra: dict[str, Any] = {"what": what, "tasks": len(pending)}
    if limit is not None:
        extra["limit_s"] = round(limit, 3)
    if left:
        for task in left:
            task.add_done_callback(_forget)  # no "exception was never retrieved" later
        log.warning(
            "did not finish in time, left behind",
            extra={**extra, "left": sorted(_name(t) for t in left)},
        )
    elif limit is not None:
        log.warning("did not finish in time, cancelled", extra=extra)
    return left


def _name(task: asyncio.Future[Any]) -> str:
    return task.get_name() if isinstance(task, asyncio.Task) else repr(task)


def _forget(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


__all__ = [
    "CANCEL_GRACE",
    "EXIT_MARGIN",
    "cancel_within",
    "finish_within",
    "session_end_timeout",
    "within",
]
