"""HealthMonitor: the periodic health check of one ClaraVoiceAgent (seed 002).

Every ``health_check_interval`` seconds one round: warn about each session older than
``stuck_session_threshold`` (a session nobody cleaned up), record the process's resident
memory into ``PerformanceMetrics.memory_usage``, decide whether the agent is healthy, export
the agent's gauges (:mod:`clara_voice.telemetry`) and log one summary line,
``Health check - Sessions: X, Errors: Y, Memory: Z MB``.

The agent is unhealthy when its event loop stalled (some synchronous work held the loop, so
audio stuttered and turns stalled) for more than ``unhealthy_loop_lag``. An outbox holding
more than ``outbox_backlog_warning`` undelivered records (the backend has been down for
long) is reported (a warning in the round's line, the ``clara_outbox_pending`` gauge), never
turned into load: a persistence backlog must not make the worker refuse new rooms, and the
outbox keeps the records. The stalls are livekit's own measure: the loop monitor it runs in
every job process (:mod:`clara_voice.agent._livekit_loop`), the worst since the previous
round. An
unhealthy agent sets ``clara_agent_unhealthy``, which the worker process reads: while any
agent is unhealthy the worker takes no new jobs (its health endpoint, a liveness probe,
is not affected: restarting it would drop every live call).

A round that fails is logged and counted (error source ``health``) and the next one runs.
The monitor is given the sessions (a :class:`SessionSource`, whose events keep the session
gauges current between rounds), the agent's metrics and two calls; it never holds the agent.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from livekit.agents.utils import aio

from clara_voice import telemetry
from clara_voice._lifecycle import AsyncService
from clara_voice.agent._livekit_ffi import ffi_subscriptions
from clara_voice.agent._livekit_loop import LoopStalls
from clara_voice.agent.metrics import PerformanceMetrics
from clara_voice.config import Settings
from clara_voice.logging import ContextLogger, get_logger
from clara_voice.telemetry import ErrorSource

SUMMARY_FORMAT = "Health check - Sessions: {sessions}, Errors: {errors}, Memory: {memory:.1f} MB"
STUCK_FORMAT = "Session {session_id} has been active for over {minutes} minutes."


class SessionView(Protocol):
    """What the monitor reads of a session (``ParticipantSession`` has it)."""

    @property
    def started(self) -> float:
        """When the session started, on the ``time.monotonic`` clock."""
        ...

    @property
    def connection_state(self) -> str: ...


class SessionSource(Protocol):
    """The sessions the monitor watches, and their events (``SessionRegistry`` is one)."""

    @property
    def sessions(self) -> Mapping[str, SessionView]: ...

    def on(self, event: Any, callback: Callable[..., Any]) -> Any: ...

    def off(self, event: Any, callback: Callable[..., Any]) -> None: ...


_SESSION_EVENTS = ("session_created", "connection_state_changed", "session_closed")
_STATE = operator.attrgetter("connection_state")


@dataclass(frozen=True, kw_only=True)
class HealthReport:
    """What one round found."""

    at: datetime
    sessions: int
    errors: int
    reconnections: int
    memory_mb: float
    loop_lag: float | None
    """Worst event-loop stall since the previous round, in seconds (None: not measured)."""
    outbox_pending: int | None
    stuck_sessions: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    """Why the agent is unhealthy (empty when healthy)."""
    warnings: tuple[str, ...] = ()
    """What is wrong without making the agent unhealthy (a persistence backlog)."""
    figures: Mapping[str, int | None] = field(default_factory=dict)
    """What else the agent counts (open streams, FFI subscriptions, tasks): a leak shows."""

    @property
    def healthy(self) -> bool:
        return not self.reasons

    @property
    def summary(self) -> str:
        """The seed's summary line."""
        return SUMMARY_FORMAT.format(
            sessions=self.sessions, errors=self.errors, memory=self.memory_mb
        )


class HealthMonitor(AsyncService):
    """Runs the health check of one agent until :meth:`aclose`."""

    def __init__(
        self,
        sessions: SessionSource,
        metrics: PerformanceMetrics,
        settings: Settings,
        *,
        outbox_pending: Callable[[], int | None] = lambda: None,
        figures: Callable[[], Mapping[str, int | None]] = dict,
        count_error: Callable[[ErrorSource], None] = lambda source: None,
        log: ContextLogger | None = None,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._outbox_pending = outbox_pending
        self._figures = figures
        self._count_error = count_error
        self._interval = settings.health_check_interval
        self._stuck_after = settings.stuck_session_threshold
        self._max_lag = settings.unhealthy_loop_lag
        self._backlog_warning = settings.outbox_backlog_warning
        self._log = log or get_logger("clara_voice.health")
        self._gauges = telemetry.AgentGauges()
        self._stalls: LoopStalls | None = None
        self.healthy = True
        self.last_report: HealthReport | None = None
        self.rounds = 0
        """Rounds that completed (failed rounds not included)."""
        self._round_atask: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    @property
    def running(self) -> bool:
        return self._started and not self._closed

    async def start(self) -> None:
        """Start the rounds (the first after one interval); idempotent."""
        if self._started or self._closed:
            return
        self._started = True
        for event in _SESSION_EVENTS:
            self._sessions.on(event, self._on_sessions_changed)
        self.sessions_changed()
        self._gauges.set_running(True)  # the agent's first sessions are made: it has started
        self._stalls = LoopStalls()
        self._round_atask = asyncio.create_task(self._run(), name="clara.health.rounds")

    async def aclose(self) -> None:
        """Stop the rounds and take the agent's share out of the gauges; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            for event in _SESSION_EVENTS:
                self._sessions.off(event, self._on_sessions_changed)
        if self._round_atask is not None:
            await aio.cancel_and_wait(self._round_atask)
        self._round_atask = None
        if self._stalls is not None:
            self._stalls.close()
        self._gauges.clear()

    def sessions_changed(self) -> None:
        """Export the session gauges now (a session was added, moved or removed) instead of
        at the next round; does nothing unless the monitor is running."""
        if self.running:
            self._gauges.set_session_states(self._session_states())

    def _on_sessions_changed(self, *_: Any) -> None:
        self.sessions_changed()

    def check(self) -> HealthReport:
        """One round: warn, measure, decide, export, log. Raises what a failing read raises."""
        metrics = self._metrics
        stuck = self._stuck_sessions()
        metrics.memory_usage = telemetry.process_memory_mb()
        lag = self._stalls.take() if self._stalls is not None else None
        pending = self._outbox_pending()
        reasons: list[str] = []
        if lag is not None and lag > self._max_lag:
            reasons.append(f"event loop lag {lag * 1000:.0f} ms > {self._max_lag * 1000:.0f} ms")
        warnings: list[str] = []
        if pending is not None and pending > self._backlog_warning:
            warnings.append(f"outbox pending {pending} > {self._backlog_warning}")
        report = HealthReport(
            at=datetime.now(UTC),
            sessions=len(self._sessions.sessions),
            errors=metrics.error_count,
            reconnections=metrics.reconnection_count,
            memory_mb=metrics.memory_usage,
            loop_lag=lag,
            outbox_pending=pending,
            stuck_sessions=stuck,
            reasons=tuple(reasons),
            warnings=tuple(warnings),
            figures={
                "tasks": len(asyncio.all_tasks()),
                "ffi_subscriptions": ffi_subscriptions(),
                **self._figures(),
            },
        )
        if not self._closed:  # a closed agent's share is out of the gauges for good
            self._export(report)
        self._log_report(report)
        self.last_report = report
        self.rounds += 1
        return report

    # -- internals --------------------------------------------------------------------

    async def _run(self) -> None:
        ticker = aio.interval(self._interval)
        await ticker.tick()  # the first tick returns at once: the first round waits one interval
        while True:
            await ticker.tick()
            try:
                self.check()
            except Exception as exc:
                self._log.error("health check failed", exc_info=exc)
                try:
                    self._count_error("health")
                except Exception as count_exc:
                    self._log.error("could not count the failed health check", exc_info=count_exc)

    def _stuck_sessions(self) -> tuple[str, ...]:
        minutes = f"{self._stuck_after / 60:g}"
        now = time.monotonic()
        cutoff = now - self._stuck_after
        sessions = self._sessions.sessions
        stuck = tuple(sid for sid, session in sessions.items() if session.started < cutoff)
        for session_id in stuck:
            self._log.warning(
                STUCK_FORMAT.format(session_id=session_id, minutes=minutes),
                extra={
                    "session_id": session_id,
                    "age_s": round(now - sessions[session_id].started, 1),
                    "connection_state": sessions[session_id].connection_state,
                },
            )
        return stuck

    def _session_states(self) -> Counter[str]:
        return Counter(map(_STATE, list(self._sessions.sessions.values())))

    def _export(self, report: HealthReport) -> None:
        self._gauges.set_session_states(self._session_states())
        self._gauges.set_outbox_pending(report.outbox_pending or 0)
        self._gauges.set_unhealthy(not report.healthy)
        telemetry.set_memory_mb(report.memory_mb)

    def _log_report(self, report: HealthReport) -> None:
        if report.healthy != self.healthy:
            self.healthy = report.healthy
            if report.healthy:
                self._log.info("agent healthy again")
            else:
                self._log.warning("agent unhealthy", extra={"reasons": list(report.reasons)})
        extra: dict[str, object] = {
            "sessions": report.sessions,
            "errors": report.errors,
            "reconnections": report.reconnections,
            "memory_mb": round(report.memory_mb, 1),
            "healthy": report.healthy,
            "loop_lag_ms": None if report.loop_lag is None else round(report.loop_lag * 1000, 1),
            "outbox_pending": report.outbox_pending,
            **report.figures,
        }
        if report.reasons:
            extra["reasons"] = list(report.reasons)
        if report.warnings:
            extra["warnings"] = list(report.warnings)
        level = logging.INFO if report.healthy and not report.warnings else logging.WARNING
        self._log.log(level, report.summary, extra=extra)


__all__ = ["HealthMonitor", "HealthReport", "SessionSource", "SessionView"]
