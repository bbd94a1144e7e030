"""HealthMonitor on fake sessions with short intervals: the seed's summary line, stuck
sessions, memory, the healthy/unhealthy decision, a failing round, and its lifecycle."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from livekit import rtc
from livekit.agents.telemetry import loop_monitor
from prometheus_client import REGISTRY

from clara_voice.agent.health import HealthMonitor
from clara_voice.agent.metrics import PerformanceMetrics
from clara_voice.config import Settings, load_settings
from clara_voice.logging import ContextLogger, get_logger
from clara_voice.telemetry import ErrorSource
from testkit.tasks import other_tasks

INTERVAL = 0.05
WAIT = 3.0  # seconds any expected round may take on a loaded machine
SUMMARY = re.compile(r"^Health check - Sessions: (\d+), Errors: (\d+), Memory: (\d+\.\d) MB$")


@dataclass
class FakeSession:
    age_seconds: float = 1.0
    connection_state: str = "connected"

    @property
    def started(self) -> float:
        return time.monotonic() - self.age_seconds


class FakeAgent(rtc.EventEmitter[str]):
    """What HealthMonitor is given of a room job: its sessions (and their events), its
    metrics, its outbox backlog and its error count."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions: dict[str, FakeSession] = {}
        self.metrics = PerformanceMetrics()
        self.pending: int | None = 0
        self.fail: Exception | None = None
        self.counted: list[ErrorSource] = []

    def outbox_pending(self) -> int | None:
        if self.fail is not None:
            raise self.fail
        return self.pending

    def count_error(self, source: ErrorSource) -> None:
        self.counted.append(source)
        self.metrics.error_count += 1


def monitor_of(fake: FakeAgent, settings: Settings, *, log: ContextLogger) -> HealthMonitor:
    return HealthMonitor(
        fake,
        fake.metrics,
        settings,
        outbox_pending=fake.outbox_pending,
        count_error=fake.count_error,
        log=log,
    )


class Records(logging.Handler):
    """The records of the monitor's logger, with a wait for the one a test expects."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._changed.set()

    def matching(self, predicate: Callable[[logging.LogRecord], bool]) -> list[logging.LogRecord]:
        return [r for r in self.records if predicate(r)]

    async def wait_for(
        self, predicate: Callable[[logging.LogRecord], bool], what: str, *, count: int = 1
    ) -> logging.LogRecord:
        """The ``count``-th record matching ``predicate``, waiting up to WAIT seconds."""
        try:
            async with asyncio.timeout(WAIT):
                while len(found := self.matching(predicate)) < count:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            seen = [r.getMessage() for r in self.records[-10:]]
            raise AssertionError(f"no {what} within {WAIT}s; last records: {seen}") from None
        return found[count - 1]

    def summaries(self) -> list[logging.LogRecord]:
        return self.matching(is_summary)


def is_summary(record: logging.LogRecord) -> bool:
    return record.getMessage().startswith("Health check - ")


def summary_after(records: Records) -> Callable[[logging.LogRecord], bool]:
    """Summaries of rounds that start after this call."""
    seen = set(map(id, records.summaries()))
    return lambda record: is_summary(record) and id(record) not in seen


def gauge(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None, name
    return value


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("tests.health")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def log() -> ContextLogger:
    return get_logger("tests.health", room="room-1")


def health_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "health_check_interval": INTERVAL,
        "unhealthy_loop_lag": 0.25,
        "data_dir": tmp_path / "data",
    }
    return load_settings(**(values | overrides))


@pytest.fixture
def fake() -> FakeAgent:
    return FakeAgent()


@pytest.fixture
async def monitor(
    fake: FakeAgent, tmp_path: Path, log: ContextLogger
) -> AsyncIterator[HealthMonitor]:
    health = monitor_of(fake, health_settings(tmp_path), log=log)
    await health.start()
    yield health
    await health.aclose()


async def test_the_summary_line_has_the_seeds_wording_and_the_agents_numbers(
    fake: FakeAgent, records: Records, tmp_path: Path, log: ContextLogger
) -> None:
    fake.sessions = {"s1": FakeSession(), "s2": FakeSession(connection_state="reconnecting")}
    fake.metrics.error_count = 3
    fake.metrics.reconnection_count = 1
    fake.pending = 7
    async with monitor_of(fake, health_settings(tmp_path), log=log) as monitor:
        record = await records.wait_for(is_summary, "health check summary")

    match = SUMMARY.match(record.getMessage())
    assert match is not None, record.getMessage()
    assert match.group(1, 2) == ("2", "3")
    memory = record.memory_mb  # type: ignore[attr-defined]
    assert memory > 0
    assert match.group(3) == f"{memory:.1f}"
    assert record.levelno == logging.INFO
    assert record.sessions == 2  # type: ignore[attr-defined]
    assert record.errors == 3  # type: ignore[attr-defined]
    assert record.reconnections == 1  # type: ignore[attr-defined]
    assert record.healthy is True  # type: ignore[attr-defined]
    assert record.outbox_pending == 7  # type: ignore[attr-defined]
    assert record.loop_lag_ms is None  # type: ignore[attr-defined]  # no livekit loop monitor here
    assert record.room == "room-1"  # type: ignore[attr-defined]  # the agent's log context
    assert fake.metrics.memory_usage > 0  # recorded into PerformanceMetrics
    assert monitor.last_report is not None
    assert monitor.healthy
    assert fake.counted == []


async def test_each_round_reports_the_counts_as_they_are_then(
    fake: FakeAgent, records: Records, monitor: HealthMonitor
) -> None:
    first = await records.wait_for(is_summary, "a first summary")
    assert SUMMARY.match(first.getMessage()).group(1, 2) == ("0", "0")  # type: ignore[union-attr]

    fake.sessions["s1"] = FakeSession()
    fake.metrics.error_count += 1  # e.g. the STT failed a turn
    fake.metrics.reconnection_count += 2
    later = await records.wait_for(summary_after(records), "a summary after the error")
    assert SUMMARY.match(later.getMessage()).group(1, 2) == ("1", "1")  # type: ignore[union-attr]
    assert later.reconnections == 2  # type: ignore[attr-defined]
    assert monitor.last_report is not None and monitor.last_report.errors == 1


async def test_a_session_older_than_the_threshold_is_reported_as_stuck(
    fake: FakeAgent, records: Records, tmp_path: Path, log: ContextLogger
) -> None:
    fake.sessions = {
        "session_old": FakeSession(age_seconds=121.0),
        "session_new": FakeSession(age_seconds=5.0),
    }
    settings = health_settings(tmp_path, stuck_session_threshold=120.0)
    async with monitor_of(fake, settings, log=log):
        await records.wait_for(is_summary, "a summary")

    stuck = records.matching(lambda r: r.levelno == logging.WARNING and not is_summary(r))
    assert stuck, "no stuck-session warning"
    assert {r.getMessage() for r in stuck} == {
        "Session session_old has been active for over 2 minutes."
    }
    assert stuck[0].session_id == "session_old"  # type: ignore[attr-defined]
    assert stuck[0].age_s == 121.0  # type: ignore[attr-defined]


async def test_a_persistence_backlog_is_reported_and_never_makes_the_agent_unhealthy(
    fake: FakeAgent, records: Records, tmp_path: Path, log: ContextLogger
) -> None:
    """Regression (issue 16, item 6): a backend backlog made the agent unhealthy, so the
    worker refused new rooms because persistence was slow; the outbox keeps the records."""
    baseline = gauge("clara_agent_unhealthy"), gauge("clara_outbox_pending")
    fake.pending = 11
    settings = health_settings(tmp_path, outbox_backlog_warning=10)
    async with monitor_of(fake, settings, log=log) as monitor:
        summary = await records.wait_for(
            lambda r: is_summary(r) and bool(getattr(r, "warnings", None)), "the warning"
        )
        assert summary.warnings == ["outbox pending 11 > 10"]  # type: ignore[attr-defined]
        assert summary.levelno == logging.WARNING
        assert summary.healthy is True  # type: ignore[attr-defined]
        assert monitor.healthy
        assert gauge("clara_agent_unhealthy") == baseline[0]
        assert gauge("clara_outbox_pending") == baseline[1] + 11
        assert not [r for r in records.records if r.getMessage() == "agent unhealthy"]
    assert gauge("clara_outbox_pending") == baseline[1]  # closing takes the share back


@pytest.fixture
async def livekit_loop_monitor() -> AsyncIterator[loop_monitor.EventLoopMonitor]:
    """livekit's loop monitor on the test's loop, as a job process has one."""
    loop = asyncio.get_running_loop()
    thresholds = loop_monitor.LoopMonitorThresholds(warn=0.1, error=0.5)
    monitor = loop_monitor.start_monitoring(loop, thresholds=thresholds, emit_spans=False)
    assert monitor is not None
    yield monitor
    loop_monitor.stop_monitoring(loop)


async def test_a_blocked_event_loop_makes_the_agent_unhealthy_for_that_round(
    livekit_loop_monitor: loop_monitor.EventLoopMonitor,
    fake: FakeAgent,
    records: Records,
    tmp_path: Path,
    log: ContextLogger,
) -> None:
    """The stall is livekit's own measure (its job-process loop monitor), not a second one;
    this also pins the monitor's report hook the health check listens on: a livekit
    upgrade that moves it fails here."""
    monitor = monitor_of(fake, health_settings(tmp_path), log=log)
    await monitor.start()
    assert livekit_loop_monitor._on_report is not None  # the health check listens
    await records.wait_for(is_summary, "a first summary")
    # hold the loop longer than the 0.25 s bound, as synchronous work in a handler would
    asyncio.get_running_loop().call_soon(time.sleep, 0.6)

    turned = await records.wait_for(lambda r: r.getMessage() == "agent unhealthy", "unhealthy")
    (reason,) = turned.reasons  # type: ignore[attr-defined]
    assert reason.startswith("event loop lag ")
    lagging = records.matching(lambda r: is_summary(r) and r.healthy is False)[0]  # type: ignore[attr-defined]
    assert lagging.loop_lag_ms > 250  # type: ignore[attr-defined]

    await records.wait_for(lambda r: r.getMessage() == "agent healthy again", "recovery")
    assert monitor.healthy
    await monitor.aclose()
    assert livekit_loop_monitor._on_report is None  # and stops listening when closed


async def test_a_failing_round_is_logged_and_counted_and_the_next_round_runs(
    fake: FakeAgent, records: Records, monitor: HealthMonitor
) -> None:
    await records.wait_for(is_summary, "a first summary")
    fake.fail = RuntimeError("outbox unreadable")

    failed = await records.wait_for(
        lambda r: r.getMessage() == "health check failed", "the failed round"
    )
    assert failed.levelno == logging.ERROR
    assert failed.exc_info is not None and str(failed.exc_info[1]) == "outbox unreadable"
    assert "health" in fake.counted
    assert monitor.healthy  # a round that could not decide changes nothing

    fake.fail = None
    errors = len(fake.counted)
    later = await records.wait_for(summary_after(records), "a round after the failure")
    assert SUMMARY.match(later.getMessage()).group(2) == str(errors)  # type: ignore[union-attr]


async def test_the_session_gauges_follow_the_agent_and_closing_takes_them_back(
    fake: FakeAgent, tmp_path: Path, log: ContextLogger
) -> None:
    def active() -> float:
        return gauge("clara_active_sessions")

    def in_state(state: str) -> float:
        value = REGISTRY.get_sample_value("clara_sessions_by_state", {"state": state})
        return value or 0.0

    baseline = active(), in_state("connected"), in_state("reconnecting")
    started = gauge("clara_agents_running")
    monitor = monitor_of(fake, health_settings(tmp_path, health_check_interval=60.0), log=log)
    fake.sessions["a"] = FakeSession()
    monitor.sessions_changed()  # not running yet: nothing exported
    assert active() == baseline[0]

    await monitor.start()
    assert active() == baseline[0] + 1
    assert gauge("clara_agents_running") == started + 1  # the worker stops counting it as starting
    fake.sessions["b"] = FakeSession(connection_state="reconnecting")
    fake.emit("session_created", fake.sessions["b"])  # the gauges follow the sessions' events
    assert active() == baseline[0] + 2
    assert (in_state("connected"), in_state("reconnecting")) == (baseline[1] + 1, baseline[2] + 1)

    await monitor.aclose()
    assert (active(), in_state("connected"), in_state("reconnecting")) == baseline
    assert gauge("clara_agents_running") == started
    fake.emit("session_closed", fake.sessions.pop("b"), "left")  # closed: nothing exported
    assert active() == baseline[0]
    assert not fake._events.get("session_closed")  # no handler left behind


async def test_start_and_aclose_are_idempotent_and_leave_no_task(
    fake: FakeAgent, records: Records, tmp_path: Path, log: ContextLogger
) -> None:
    def health_tasks() -> set[asyncio.Task[object]]:
        return {t for t in other_tasks() if t.get_name().startswith("clara.health.")}

    monitor = monitor_of(fake, health_settings(tmp_path), log=log)
    await monitor.aclose()  # never started: nothing to do
    monitor = monitor_of(fake, health_settings(tmp_path), log=log)
    await monitor.start()
    tasks = health_tasks()
    assert len(tasks) == 1  # the rounds (the loop's stalls are livekit's measure)
    await monitor.start()
    assert health_tasks() == tasks
    await records.wait_for(is_summary, "a summary")

    await monitor.aclose()
    assert health_tasks() == set()
    assert all(t.cancelled() for t in tasks)
    rounds = monitor.rounds
    await monitor.aclose()
    await monitor.start()  # a closed monitor stays closed
    assert health_tasks() == set()
    assert monitor.rounds == rounds
    assert not records.matching(lambda r: r.levelno >= logging.ERROR)


async def test_the_ffi_queue_count_sees_a_reader_open_and_closed() -> None:
    """clara reads livekit's private FFI queue to show leaked readers in the health line;
    this fails loudly when a livekit upgrade moves it."""
    from livekit.rtc._ffi_client import FfiClient

    from clara_voice.agent._livekit_ffi import ffi_subscriptions

    ffi = FfiClient.instance.queue
    queue = ffi.subscribe(filter_fn=lambda event: False)
    try:
        assert any(q is queue for q, *_ in ffi._subscribers)  # what the count reads
        count = ffi_subscriptions()
        assert count is not None and count >= 1
    finally:
        ffi.unsubscribe(queue)
    assert not any(q is queue for q, *_ in ffi._subscribers)


async def test_the_health_line_counts_what_would_show_a_leak(
    fake: FakeAgent, records: Records, tmp_path: Path, log: ContextLogger
) -> None:
    settings = health_settings(tmp_path)
    monitor = HealthMonitor(
        fake, fake.metrics, settings, figures=lambda: {"open_streams": 3}, log=log
    )
    report = monitor.check()
    assert report.figures["open_streams"] == 3
    assert isinstance(report.figures["ffi_subscriptions"], int)
    assert report.figures["tasks"] >= 1  # type: ignore[operator]
    summary = records.summaries()[-1]
    assert summary.open_streams == 3  # type: ignore[attr-defined]
    await monitor.aclose()
