"""PipelineRevival: a session outlives the pipeline livekit closed under it.

livekit closes an AgentSession after unrecoverable provider errors (its STT stream failing
past its retries, say). The participant is still in the room, talking to nobody, so the
session does not end with it: the client is told at once (the session's state goes to
``error``, a ``clara.sync`` event), and after a backoff (``BACKOFF`` seconds, one after the
other) a new pipeline is built for the same session, continuing its conversation; the
client then hears (or reads) the apology and the state goes back to ``active``. A session
whose pipeline fails ``len(BACKOFF)`` times without running ``STABLE_AFTER`` seconds in
between, or whose participant left meanwhile, ends as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from livekit.agents.utils import aio

from clara_voice.agent.registry import SessionRegistry
from clara_voice.agent.session import ParticipantSession

BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0)
"""Seconds before each rebuild of a failed pipeline; then the session ends."""
STABLE_AFTER = 60.0
"""A rebuilt pipeline that ran this long without failing starts the count again."""


class PipelineRevival:
    """Rebuilds failed pipelines of a room job's sessions; see the module docstring."""

    def __init__(
        self,
        registry: SessionRegistry,
        *,
        present: Callable[[ParticipantSession], bool],
        rebuild: Callable[[ParticipantSession], Awaitable[bool]],
        end_session: Callable[..., object],
        backoff: tuple[float, ...] | None = None,
    ) -> None:
        self._registry = registry
        self._present = present
        self._rebuild = rebuild
        self._end_session = end_session
        self._given_backoff = backoff
        self._failures: dict[str, tuple[int, float]] = {}
        """Session id → (failures in a row, when the last rebuild finished)."""
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._closed = False

    @property
    def _backoff(self) -> tuple[float, ...]:
        return BACKOFF if self._given_backoff is None else self._given_backoff

    def pipeline_failed(self, session: ParticipantSession, reason: str) -> bool:
        """livekit closed ``session``'s pipeline for ``reason``: ``True`` when a rebuild is
        under way (the caller leaves the session alone), ``False`` when it should end."""
        if self._closed or session.session_id in self._tasks or not self._present(session):
            return False
        failures, rebuilt_at = self._failures.get(session.session_id, (0, 0.0))
        if rebuilt_at and time.monotonic() - rebuilt_at > STABLE_AFTER:
            failures = 0
        if failures >= len(self._backoff):
            session.log.error(
                "pipeline failed again after every rebuild, ending the session",
                extra={"reason": reason, "rebuilds": failures},
            )
            return False
        self._failures[session.session_id] = (failures, rebuilt_at)
        self._registry.transition(
            session, "error", reason=f"pipeline failed ({reason}), starting a new one"
        )
        task = asyncio.create_task(
            self._revive(session, reason), name=f"clara.revive.{session.session_id}"
        )
        self._tasks[session.session_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(session.session_id, None))
        return True

    def forget(self, session_id: str) -> None:
        """``session_id`` ended: forget its failures and stop a rebuild under way."""
        self._failures.pop(session_id, None)
        task = self._tasks.pop(session_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def aclose(self) -> None:
        """Stop every rebuild; safe to call twice."""
        self._closed = True
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await aio.cancel_and_wait(*tasks)

    async def _revive(self, session: ParticipantSession, reason: str) -> None:
        sid = session.session_id
        pipeline, session.pipeline = session.pipeline, None
        if pipeline is not None:
            try:
                await pipeline.aclose()
            except Exception as exc:
                session.log.warning("failed to close the failed pipeline", exc_info=exc)
        while True:
            failures, _ = self._failures.get(sid, (0, 0.0))
            if failures >= len(self._backoff):
                self._end_session(sid, reason="pipeline could not be restarted")
                return
            delay = self._backoff[failures]
            self._failures[sid] = (failures + 1, 0.0)
            session.log.warning(
                "pipeline failed, a new one starts soon", extra={"reason": reason, "in_s": delay}
            )
            await asyncio.sleep(delay)
            if self._registry.sessions.get(sid) is not session:
                return  # ended meanwhile
            if not self._present(session):
                self._end_session(sid, reason="participant gone while its pipeline restarted")
                return
            if await self._rebuild(session):
                self._failures[sid] = (failures + 1, time.monotonic())
                return
            reason = "the new pipeline did not start"


__all__ = ["BACKOFF", "STABLE_AFTER", "PipelineRevival"]
