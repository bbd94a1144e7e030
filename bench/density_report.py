"""The figures of bench/density.py: one :class:`Phase` per worker variant and room count,
its JSON line, and the summary table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.density_procs import Usage

INFLATION_LIMIT = 0.10
"""The p95 reply latency may grow this much over one room's before a room count is "past"."""


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile, linear between the closest ranks (numpy's default)."""
    return float(np.percentile(values, q)) if values else None


def ms(value: float | None) -> int | None:
    return None if value is None else round(value * 1000)


@dataclass
class Phase:
    """One variant carrying ``rooms`` conversations (0: the idle worker)."""

    variant: str
    rooms: int
    loadavg: tuple[float, float, float]
    worker: Usage = field(default_factory=Usage)
    server: Usage | None = None
    bench_cores: float | None = None
    machine_cores: float | None = None
    job_starts: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    failed_jobs: int = 0
    failed_turns: int = 0
    no_speaking_state: int = 0
    refusals: int = 0
    loop_lag_max: float | None = None
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    processes_before: int = 0
    """Processes in the worker's tree before the rooms (the worker, its forkserver, the
    warm processes) and after they closed and the tree settled: more after means job
    processes that outlived their room."""
    processes_after: int = 0
    inflation: float | None = None
    """p95 reply latency over the variant's one-room p95, minus 1."""

    @property
    def failed(self) -> bool:
        return bool(self.failed_jobs or self.failed_turns)

    def per_room(self, total: float, idle: float | None) -> float | None:
        if not self.rooms or idle is None:
            return None
        return (total - idle) / self.rooms

    def to_json(self, idle: Phase | None) -> dict[str, Any]:
        w = self.worker
        return {
            "variant": self.variant,
            "rooms": self.rooms,
            "loadavg_at_start": [round(x, 2) for x in self.loadavg],
            "worker_cores": round(w.cores, 3),
            "worker_cores_per_room": _round(
                self.per_room(w.cores, idle.worker.cores if idle else None), 3
            ),
            "worker_pss_mb": round(w.pss_mb),
            "worker_pss_mb_per_room": _round(
                self.per_room(w.pss_mb, idle.worker.pss_mb if idle else None), 1
            ),
            "worker_uss_mb": round(w.uss_mb),
            "worker_rss_mb": round(w.rss_mb),
            "worker_processes": w.processes,
            "server_cores": _round(self.server.cores if self.server else None, 3),
            "server_rss_mb": _round(self.server.rss_mb if self.server else None, 0),
            "bench_cores": _round(self.bench_cores, 3),
            "machine_cores": _round(self.machine_cores, 3),
            "job_start_p50_ms": ms(percentile(self.job_starts, 50)),
            "job_start_max_ms": ms(max(self.job_starts, default=None)),
            "reply_p50_ms": ms(percentile(self.latencies, 50)),
            "reply_p95_ms": ms(percentile(self.latencies, 95)),
            "reply_max_ms": ms(max(self.latencies, default=None)),
            "p95_inflation_pct": _round(
                None if self.inflation is None else self.inflation * 100, 1
            ),
            "turns_measured": len(self.latencies),
            "failed_jobs": self.failed_jobs,
            "failed_turns": self.failed_turns,
            "turns_without_speaking_state": self.no_speaking_state,
            "refusals_logged": self.refusals,
            "client_loop_lag_max_ms": ms(self.loop_lag_max),
            "worker_processes_before_after": [self.processes_before, self.processes_after],
            "seconds": round(self.seconds, 1),
            "errors": self.errors[:3],
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def set_inflation(phases: list[Phase]) -> None:
    """Each phase's p95 over the p95 of the variant's smallest room count that has one."""
    base = next((percentile(p.latencies, 95) for p in phases if p.rooms and p.latencies), None)
    for phase in phases:
        p95 = percentile(phase.latencies, 95)
        if base and p95 is not None and phase.rooms:
            phase.inflation = p95 / base - 1


def first_past(phases: list[Phase], limit: float = INFLATION_LIMIT) -> int | None:
    """The first room count whose p95 inflation passes ``limit`` (or whose turns fail)."""
    for phase in phases:
        if phase.rooms and (phase.failed or (phase.inflation or 0.0) > limit):
            return phase.rooms
    return None


HEADER = (
    "| variant | rooms | load avg (1 min) at start | worker CPU (cores) | per room | "
    "worker PSS (MB) | per room (marginal) | livekit-server CPU | bench client CPU | "
    "machine busy (cores) | job start p50 / max (ms) | reply p50 / p95 (ms) | "
    "p95 inflation | failed jobs / turns | client loop lag max (ms) |"
)


def table(variants: dict[str, list[Phase]]) -> str:
    rows = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for phases in variants.values():
        idle = next((p for p in phases if p.rooms == 0), None)
        for p in phases:
            j = p.to_json(idle)
            rows.append(
                "| "
                + " | ".join(
                    [
                        p.variant,
                        str(p.rooms),
                        f"{p.loadavg[0]:.2f}",
                        f"{j['worker_cores']:.2f}",
                        _fmt(j["worker_cores_per_room"], "{:.3f}"),
                        str(j["worker_pss_mb"]),
                        _fmt(j["worker_pss_mb_per_room"], "{:.0f}"),
                        _fmt(j["server_cores"], "{:.2f}"),
                        _fmt(j["bench_cores"], "{:.2f}"),
                        _fmt(j["machine_cores"], "{:.2f}"),
                        f"{_fmt(j['job_start_p50_ms'])} / {_fmt(j['job_start_max_ms'])}",
                        f"{_fmt(j['reply_p50_ms'])} / {_fmt(j['reply_p95_ms'])}",
                        _fmt(j["p95_inflation_pct"], "{:+.0f} %"),
                        f"{p.failed_jobs} / {p.failed_turns}",
                        _fmt(j["client_loop_lag_max_ms"]),
                    ]
                )
                + " |"
            )
    return "\n".join(rows)


def _fmt(value: Any, pattern: str = "{}") -> str:
    return "—" if value is None else pattern.format(value)


__all__ = ["INFLATION_LIMIT", "Phase", "first_past", "ms", "percentile", "set_inflation", "table"]
