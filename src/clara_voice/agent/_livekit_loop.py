"""Event-loop stalls as livekit-agents measures them in a job process.

livekit runs a loop monitor in every job process (``telemetry.loop_monitor``): a heartbeat
and a watchdog thread that report each block of the loop over its warn threshold (100 ms
by default), with where it happened. The agent's health check reads those reports instead
of measuring the loop a second time. :func:`loop_monitor.get_monitor` is public; a report is
offered to ``EventLoopMonitor._on_report``, which livekit documents as the hook for "tests
and integrations" but names as private: :class:`LoopStalls` chains onto it, keeping
whatever hook was there. tests/agent/test_health.py fails loudly if that hook moves.
"""

from __future__ import annotations

import asyncio
from typing import Any

from livekit.agents.telemetry import loop_monitor


class LoopStalls:
    """The worst stall of this loop livekit reported since the last :meth:`take`."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._monitor = loop_monitor.get_monitor(loop or asyncio.get_running_loop())
        self._worst = 0.0
        self._previous: Any = None
        if self._monitor is not None:
            self._previous = self._monitor._on_report
            self._monitor._on_report = self._on_report

    @property
    def watching(self) -> bool:
        """Whether livekit's loop monitor runs on this loop (it may be turned off)."""
        return self._monitor is not None

    def take(self) -> float | None:
        """Seconds of the worst stall since the previous call (0 when none); ``None`` when
        no monitor runs on this loop."""
        if self._monitor is None:
            return None
        worst, self._worst = self._worst, 0.0
        return worst

    def close(self) -> None:
        """Stop listening (the hook that was there before is put back); safe to call twice."""
        if self._monitor is not None and self._monitor._on_report == self._on_report:
            self._monitor._on_report = self._previous
        self._monitor = None

    def _on_report(self, report: loop_monitor.BlockedReport) -> None:
        self._worst = max(self._worst, report.duration)
        if self._previous is not None:
            self._previous(report)


__all__ = ["LoopStalls"]
