"""livekit-agents internals clara_voice has to reach, each in one place.

Where livekit offers no public API for something clara_voice needs, the dependency lives
here, with a comment saying why and a test that fails loudly when a livekit upgrade moves
it (tests/voice/test_pipeline.py).
"""

from __future__ import annotations

from typing import Any

from livekit.agents import AgentSession
from livekit.agents.job import get_job_context


def forget_job_shutdown_callbacks(agent_session: AgentSession[Any]) -> int:
    """Take ``agent_session``'s callback out of the job's shutdown; how many were removed.

    livekit-agents 1.8's ``AgentSession.start`` registers the session's close with the job's
    shutdown and offers no way to take it back, so a job serving many participants over its
    life would keep every ended session alive until the job ends, and close them all again
    then. There is no public API for this: the callbacks are the job context's private
    ``_shutdown_callbacks`` list, and livekit's entry is a wrapper around a lambda that holds
    the session. tests/voice/test_pipeline.py pins both, so a livekit upgrade that changes them
    fails there.
    """
    job = get_job_context(required=False)
    if job is None:
        return 0
    callbacks: list[Any] = job._shutdown_callbacks
    mine = [cb for cb in callbacks if _holds(cb, agent_session, depth=2)]
    for callback in mine:
        callbacks.remove(callback)
    return len(mine)


def _holds(fn: Any, target: object, *, depth: int) -> bool:
    """Whether ``fn``'s closure (or, down to ``depth``, a closure in it) holds ``target``."""
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if value is target:
            return True
        if depth > 1 and callable(value) and _holds(value, target, depth=depth - 1):
            return True
    return False


__all__ = ["forget_job_shutdown_callbacks"]
