"""clara_voice's Prometheus metrics (seed 002), served by livekit's ``/metrics`` endpoint.

The metrics are defined once, at import. Agents run in job processes, so the worker turns
on prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, see
:mod:`clara_voice.worker`): each process writes its values into a file of that folder and
the worker process merges them when ``/metrics`` is scraped. Each gauge says how the
processes' values combine (``multiprocess_mode``): ``livesum`` for things that add up
(sessions, pending records, unhealthy agents), ``livemax`` for memory; "live" means the
values of a process that ended are dropped, which the worker's admission does
(:func:`clara_voice.fleet.admission.sweep_dead_processes`; livekit does not). Counters and
histograms keep the totals of ended processes, as Prometheus expects of them.

An agent's gauges go through its own :class:`AgentGauges`, which adds the agent's share
and takes it back when the agent closes, so several agents in one process (livekit's
thread executor) add up instead of overwriting each other. Counters and the latency
histogram are plain module functions (:func:`record_turn`, :func:`count_error`,
:func:`count_reconnection`).
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final, Literal, NamedTuple, Protocol, get_args

import psutil  # type: ignore[import-untyped]
from prometheus_client import Counter, Gauge, Histogram, multiprocess, values

ErrorSource = Literal["provider", "persistence", "session", "health"]
"""What failed: a provider (STT, LLM, TTS), persistence (backend, outbox), a session's
lifecycle (start, close, an event handler), or a health-check round."""
ERROR_SOURCES: Final = get_args(ErrorSource)

SESSION_STATES: Final = ("connecting", "connected", "reconnecting", "error")
"""The connection states a held session can be in (closed sessions are no longer held)."""

TurnStage = Literal["e2e", "end_of_turn", "transcription", "llm_ttft", "tts_ttfb"]
TURN_STAGES: Final[dict[TurnStage, str]] = {
    "e2e": "e2e_latency",
    "end_of_turn": "end_of_turn_delay",
    "transcription": "transcription_delay",
    "llm_ttft": "llm_ttft",
    "tts_ttfb": "tts_ttfb",
}
"""Each ``stage`` label and the turn's field it observes."""


class TurnFigures(Protocol):
    """A completed turn's latencies in seconds (``voice.messages.TurnMetrics`` has them)."""

    @property
    def e2e_latency(self) -> float | None: ...

    @property
    def end_of_turn_delay(self) -> float | None: ...

    @property
    def transcription_delay(self) -> float | None: ...

    @property
    def llm_ttft(self) -> float | None: ...

    @property
    def tts_ttfb(self) -> float | None: ...


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_DIR_PREFIX = "clara-metrics-"

if _given_dir := os.environ.get(MULTIPROC_ENV):
    # in multiprocess mode every metric writes to a file there as soon as it exists: an
    # operator's folder that is not made yet would stop the process right here
    os.makedirs(_given_dir, exist_ok=True)

LATENCY_BUCKETS: Final = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0)
"""Seconds: fine steps where a voice reply feels immediate (< 1 s), coarse ones up to 10 s."""

_SESSIONS_NAME = "clara_active_sessions"
ACTIVE_SESSIONS = Gauge(
    _SESSIONS_NAME,
    "Participant sessions held by the worker's agents.",
    multiprocess_mode="livesum",
)
_RUNNING_NAME = "clara_agents_running"
AGENTS_RUNNING = Gauge(
    _RUNNING_NAME,
    "Room agents that have started: sessions made for the people present at the start.",
    multiprocess_mode="livesum",
)
SESSIONS_BY_STATE = Gauge(
    "clara_sessions_by_state",
    "Participant sessions by connection state.",
    ["state"],
    multiprocess_mode="livesum",
)
ERRORS = Counter(
    "clara_errors",
    "Errors counted by the agents, by source (provider, persistence, session, health).",
    ["source"],
)
RECONNECTIONS = Counter(
    "clara_reconnections",
    "Pipeline re-establish attempts after a participant's connection dropped.",
)
TURN_LATENCY = Histogram(
    "clara_turn_latency_seconds",
    "Per-turn latencies from livekit's turn metrics, by stage "
    "(e2e, end_of_turn, transcription, llm_ttft, tts_ttfb).",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
MEMORY_MB = Gauge(
    "clara_memory_mb",
    "Resident memory (MB) of the largest live process running an agent, "
    "as of its last health check.",
    multiprocess_mode="livemax",
)
OUTBOX_PENDING = Gauge(
    "clara_outbox_pending",
    "Persistence records committed to the outbox and not yet delivered to the backend.",
    multiprocess_mode="livesum",
)
ROOMS_HEALED = Counter(
    "clara_rooms_healed",
    "What the room watcher did for rooms without a live Clara (dispatched one, removed a "
    "dead agent).",
    ["action"],
)
JOBS_DECLINED = Counter(
    "clara_jobs_declined",
    "Room jobs this worker declined, by reason (full, draining).",
    ["reason"],
)
_UNHEALTHY_NAME = "clara_agent_unhealthy"
AGENT_UNHEALTHY = Gauge(
    _UNHEALTHY_NAME,
    "Agents whose last health check failed (while this is above 0 the worker takes no new "
    "jobs: its load reads 1.0).",
    multiprocess_mode="livesum",
)

# every labelled series exists from the start (at 0), so dashboards and rate() see them
for _source in ERROR_SOURCES:
    ERRORS.labels(source=_source)
for _state in SESSION_STATES:
    SESSIONS_BY_STATE.labels(state=_state)
for _stage in TURN_STAGES:
    TURN_LATENCY.labels(stage=_stage)


def record_turn(turn: TurnFigures) -> None:
    """Observe a completed turn's latencies (the stages livekit measured)."""
    for stage, field in TURN_STAGES.items():
        value = getattr(turn, field)
        if value is not None and math.isfinite(value) and value >= 0:
            TURN_LATENCY.labels(stage=stage).observe(value)


def count_error(source: ErrorSource) -> None:
    """Count one error of ``source``."""
    ERRORS.labels(source=source).inc()


def count_reconnection() -> None:
    """Count one attempt to re-establish a session's pipeline."""
    RECONNECTIONS.inc()


def set_memory_mb(megabytes: float) -> None:
    """This process's resident memory, in MB."""
    MEMORY_MB.set(megabytes)


def process_memory_mb() -> float:
    """Resident memory (RSS) of this process, in MB."""
    rss: int = psutil.Process().memory_info().rss
    return rss / (1024 * 1024)


class AgentGauges:
    """One agent's share of the live gauges; :meth:`clear` takes it back.

    Each setter moves the shared gauge by the difference from what this agent last set.
    """

    def __init__(self) -> None:
        self._states: dict[str, int] = {}
        self._outbox_pending = 0
        self._unhealthy = False
        self._running = False

    def set_session_states(self, counts: Mapping[str, int]) -> None:
        """The agent's sessions by connection state (their sum is its active sessions)."""
        for state in self._states.keys() | counts.keys():
            delta = counts.get(state, 0) - self._states.get(state, 0)
            if delta:
                SESSIONS_BY_STATE.labels(state=state).inc(delta)
        delta = sum(counts.values()) - sum(self._states.values())
        if delta:
            ACTIVE_SESSIONS.inc(delta)
        self._states = {state: n for state, n in counts.items() if n}

    def set_outbox_pending(self, pending: int) -> None:
        if delta := pending - self._outbox_pending:
            OUTBOX_PENDING.inc(delta)
        self._outbox_pending = pending

    def set_running(self, running: bool) -> None:
        """The agent has started (its first sessions are made) or has closed."""
        if running != self._running:
            AGENTS_RUNNING.inc(1 if running else -1)
        self._running = running

    def set_unhealthy(self, unhealthy: bool) -> None:
        if unhealthy != self._unhealthy:
            AGENT_UNHEALTHY.inc(1 if unhealthy else -1)
        self._unhealthy = unhealthy

    def clear(self) -> None:
        """Take this agent's share back out of every gauge (the agent closed)."""
        self.set_session_states({})
        self.set_outbox_pending(0)
        self.set_unhealthy(False)
        self.set_running(False)


# -- the worker process's side ------------------------------------------------------------

_worker_load: Gauge | None = None
_worker_info: Gauge | None = None
_worker_labels: dict[str, str] = {}


def worker_info(*, worker_id: str, node_id: str) -> None:
    """``clara_worker_info{worker_id, node_id} 1``: where the worker registered (the series
    of an earlier registration goes to 0)."""
    global _worker_info
    if _worker_info is None:
        _worker_info = Gauge(
            "clara_worker_info",
            "1: this worker's id at LiveKit and the node it registered with.",
            ["worker_id", "node_id"],
            multiprocess_mode="livemax",
        )
    if _worker_labels:
        _worker_info.labels(**_worker_labels).set(0)
    _worker_labels.update(worker_id=worker_id, node_id=node_id)
    _worker_info.labels(**_worker_labels).set(1)


def worker_load() -> Gauge:
    """``clara_worker_load``, made at first use (in the worker, once livekit has started:
    see :func:`multiprocess_dir`)."""
    global _worker_load
    if _worker_load is None:
        _worker_load = Gauge(
            "clara_worker_load",
            "The load this worker reports to LiveKit (0 to 1): the largest of its own "
            "processes' CPU share, its sessions against CLARA_MAX_SESSIONS, 1 while an agent "
            "is in trouble.",
            multiprocess_mode="livemax",
        )
    return _worker_load


@contextlib.contextmanager
def multiprocess_dir() -> Iterator[Path]:
    """The folder this process and every process it starts from now on write metrics to.

    An operator's ``PROMETHEUS_MULTIPROC_DIR`` is used as it is and left in place.
    Otherwise a new folder is made under the system's temporary directory, set in
    ``PROMETHEUS_MULTIPROC_DIR`` for the processes to come, and removed on exit: its files
    describe one run of one worker (two workers sharing a folder would count each other's
    agents), they are rewritten on every metric update (a temporary, often in-memory
    file system suits them better than the data volume), and livekit empties the folder
    at start anyway. The folders left by workers that were killed are removed first.

    This process imported prometheus_client (through livekit) before the variable was
    set, so its metrics were not going to the folder: the values it creates from now on
    (livekit's own worker metrics and clara's, created at first use: :func:`worker_load`,
    :data:`JOBS_DECLINED`, :data:`ROOMS_HEALED`) are switched to it, the way
    prometheus_client itself chooses at import, with files of their own (livekit deletes
    the folder's files as it starts, those of an operator's folder opened at import
    included).
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        directory, created = Path(given), False
    else:
        _remove_dead_workers_dirs()
        prefix = f"{METRICS_DIR_PREFIX}{os.getpid()}-"
        directory, created = Path(tempfile.mkdtemp(prefix=prefix)), True
        os.environ[MULTIPROC_ENV] = str(directory)
    previous = values.ValueClass
    # a new value class in any case: it opens files of its own, where an operator's folder
    # had this process's files opened at import and livekit deletes them as it starts
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    try:
        yield directory
    finally:
        values.ValueClass = previous
        if created:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(directory, ignore_errors=True)


def _remove_dead_workers_dirs() -> None:
    # a worker that was killed (SIGKILL, out of memory) could not remove its folder; the
    # folder's name carries the worker's pid
    pattern = re.compile(rf"^{re.escape(METRICS_DIR_PREFIX)}(\d+)-")
    for path in Path(tempfile.gettempdir()).glob(f"{METRICS_DIR_PREFIX}*"):
        match = pattern.match(path.name)
        if match is not None and path.is_dir() and not psutil.pid_exists(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)


class AgentsFigures(NamedTuple):
    """What the worker's agents report of themselves, summed."""

    unhealthy: int  # agents failing their health check
    sessions: int  # participant sessions they hold
    running: int  # agents that have started (a room job whose agent has not is starting)


def agents_figures(directory: str | os.PathLike[str]) -> AgentsFigures:
    """The worker's agents as their processes report them (every other live process writing
    to ``directory``, and this process's own: agents run here with livekit's thread
    executor).

    Blocking file I/O: call it off the event loop.
    """
    own = f"_{os.getpid()}.db"
    files = [
        path
        for path in glob.glob(os.path.join(os.fspath(directory), "gauge_livesum_*.db"))
        if not path.endswith(own)
    ]
    gauges = ((_UNHEALTHY_NAME, AGENT_UNHEALTHY), (_SESSIONS_NAME, ACTIVE_SESSIONS))
    totals = {
        name: sum(s.value for metric in gauge.collect() for s in metric.samples)
        for name, gauge in (*gauges, (_RUNNING_NAME, AGENTS_RUNNING))
    }
    for metric in multiprocess.MultiProcessCollector.merge(files):  # type: ignore[no-untyped-call]
        if metric.name in totals:
            totals[metric.name] += sum(sample.value for sample in metric.samples)
    unhealthy, sessions, running = (max(0, round(value)) for value in totals.values())
    return AgentsFigures(unhealthy, sessions, running)


__all__ = [
    "ACTIVE_SESSIONS",
    "AGENTS_RUNNING",
    "AGENT_UNHEALTHY",
    "ERRORS",
    "ERROR_SOURCES",
    "JOBS_DECLINED",
    "LATENCY_BUCKETS",
    "MEMORY_MB",
    "METRICS_DIR_PREFIX",
    "MULTIPROC_ENV",
    "OUTBOX_PENDING",
    "RECONNECTIONS",
    "ROOMS_HEALED",
    "SESSIONS_BY_STATE",
    "SESSION_STATES",
    "TURN_LATENCY",
    "TURN_STAGES",
    "AgentGauges",
    "AgentsFigures",
    "ErrorSource",
    "TurnStage",
    "agents_figures",
    "count_error",
    "count_reconnection",
    "multiprocess_dir",
    "process_memory_mb",
    "record_turn",
    "set_memory_mb",
    "worker_info",
    "worker_load",
]
