"""clara_voice's Prometheus metrics: in this process, and merged across job processes (real
writer processes on a multiprocess folder, read the way the worker's endpoint reads it)."""

from __future__ import annotations

import math
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess, values

from clara_voice import telemetry
from clara_voice.fleet.admission import sweep_dead_processes
from clara_voice.voice.messages import TurnMetrics
from tests.metrics_writer_proc import metrics_writers

METRIC_NAMES = (
    "clara_active_sessions",
    "clara_sessions_by_state",
    "clara_errors_total",
    "clara_reconnections_total",
    "clara_turn_latency_seconds",
    "clara_memory_mb",
    "clara_outbox_pending",
    "clara_agent_unhealthy",
)


def sample(name: str, registry: CollectorRegistry = REGISTRY, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def turn(**latencies: float | None) -> TurnMetrics:
    return TurnMetrics(at=datetime.now(UTC), user_text="hi", reply_text="hello", **latencies)


def test_every_metric_is_exported_with_its_help_and_type_from_the_start() -> None:
    text = generate_latest(REGISTRY).decode()
    for name in METRIC_NAMES:
        assert f"# HELP {name} " in text, name
    assert "# TYPE clara_turn_latency_seconds histogram" in text
    assert "# TYPE clara_errors_total counter" in text
    assert "# TYPE clara_agent_unhealthy gauge" in text
    # the labelled series exist at 0 before anything happened
    for source in ("provider", "persistence", "session", "health"):
        assert f'clara_errors_total{{source="{source}"}}' in text
    for state in ("connecting", "connected", "reconnecting", "error"):
        assert f'clara_sessions_by_state{{state="{state}"}}' in text
    for stage in ("e2e", "end_of_turn", "transcription", "llm_ttft", "tts_ttfb"):
        assert f'clara_turn_latency_seconds_count{{stage="{stage}"}}' in text


def test_a_turns_latencies_are_observed_by_stage() -> None:
    def count(stage: str) -> float:
        return sample("clara_turn_latency_seconds_count", stage=stage)

    before = {stage: count(stage) for stage in telemetry.TURN_STAGES}
    e2e_sum = sample("clara_turn_latency_seconds_sum", stage="e2e")
    under_1s = sample("clara_turn_latency_seconds_bucket", stage="e2e", le="1.0")
    under_750ms = sample("clara_turn_latency_seconds_bucket", stage="e2e", le="0.75")

    telemetry.record_turn(
        turn(e2e_latency=0.8, end_of_turn_delay=0.5, transcription_delay=0.3, llm_ttft=0.2)
    )
    telemetry.record_turn(turn(e2e_latency=math.nan, tts_ttfb=-1.0))  # not measurements

    grown = {stage: count(stage) - before[stage] for stage in telemetry.TURN_STAGES}
    assert grown == {"e2e": 1, "end_of_turn": 1, "transcription": 1, "llm_ttft": 1, "tts_ttfb": 0}
    assert sample("clara_turn_latency_seconds_sum", stage="e2e") == pytest.approx(e2e_sum + 0.8)
    assert sample("clara_turn_latency_seconds_bucket", stage="e2e", le="1.0") == under_1s + 1
    assert sample("clara_turn_latency_seconds_bucket", stage="e2e", le="0.75") == under_750ms


def test_errors_are_counted_by_source_and_reconnections_in_total() -> None:
    provider = sample("clara_errors_total", source="provider")
    health = sample("clara_errors_total", source="health")
    reconnections = sample("clara_reconnections_total")

    telemetry.count_error("provider")
    telemetry.count_error("provider")
    telemetry.count_error("health")
    telemetry.count_reconnection()

    assert sample("clara_errors_total", source="provider") == provider + 2
    assert sample("clara_errors_total", source="health") == health + 1
    assert sample("clara_reconnections_total") == reconnections + 1


def test_two_agents_gauges_add_up_and_each_takes_only_its_share_back(tmp_path: Path) -> None:
    def now() -> tuple[float, ...]:
        return (
            sample("clara_active_sessions"),
            sample("clara_sessions_by_state", state="connected"),
            sample("clara_sessions_by_state", state="reconnecting"),
            sample("clara_outbox_pending"),
            sample("clara_agent_unhealthy"),
            sample("clara_agents_running"),
        )

    base = now()
    unhealthy_base = telemetry.agents_figures(tmp_path).unhealthy
    running_base = telemetry.agents_figures(tmp_path).running
    first, second = telemetry.AgentGauges(), telemetry.AgentGauges()
    first.set_session_states({"connected": 2})
    first.set_outbox_pending(5)
    first.set_unhealthy(True)
    first.set_unhealthy(True)  # still one unhealthy agent
    first.set_running(True)
    second.set_running(True)
    second.set_session_states({"connected": 1, "reconnecting": 1})
    second.set_outbox_pending(2)
    assert [a - b for a, b in zip(now(), base, strict=True)] == [4, 3, 1, 7, 1, 2]
    # this process's values are not in a folder (no PROMETHEUS_MULTIPROC_DIR here): they
    # count as they would for agents in the worker process (livekit's thread executor)
    assert telemetry.agents_figures(tmp_path).unhealthy == unhealthy_base + 1
    assert telemetry.agents_figures(tmp_path).running == running_base + 2

    first.set_session_states({"connected": 1})  # one session left
    assert [a - b for a, b in zip(now(), base, strict=True)] == [3, 2, 1, 7, 1, 2]
    first.clear()
    assert [a - b for a, b in zip(now(), base, strict=True)] == [2, 1, 1, 2, 0, 1]
    second.clear()
    second.clear()
    assert now() == base


async def test_job_processes_metrics_are_merged_and_an_ended_process_is_swept(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(folder))  # what livekit's /metrics does

    def merged(name: str, **labels: str) -> float:
        return sample(name, registry, **labels)

    crashing = {
        "states": {"connected": 2},
        "outbox": 5,
        "unhealthy": True,
        "memory_mb": 300.0,
        "turns": [{"e2e_latency": 0.8}],
        "errors": ["provider"],
        "reconnections": 1,
    }
    closing = {
        "states": {"connected": 1, "reconnecting": 1},
        "outbox": 2,
        "memory_mb": 120.5,
        "turns": [{"e2e_latency": 1.2}],
        "errors": ["provider", "persistence"],
        "clear": True,
    }
    async with metrics_writers(folder, crashing, closing) as (first, second):
        assert merged("clara_active_sessions") == 4
        assert merged("clara_sessions_by_state", state="connected") == 3
        assert merged("clara_sessions_by_state", state="reconnecting") == 1
        assert merged("clara_outbox_pending") == 7
        assert merged("clara_agent_unhealthy") == 1
        assert merged("clara_memory_mb") == 300.0  # the largest process
        assert merged("clara_errors_total", source="provider") == 2
        assert merged("clara_errors_total", source="persistence") == 1
        assert merged("clara_reconnections_total") == 1
        assert merged("clara_turn_latency_seconds_count", stage="e2e") == 2
        assert merged("clara_turn_latency_seconds_sum", stage="e2e") == pytest.approx(2.0)
        assert "clara_agent_unhealthy 1.0" in generate_latest(registry).decode()
        assert telemetry.agents_figures(folder).unhealthy == 1
        assert sweep_dead_processes(folder) == []  # both alive

        await second.stop()  # an agent that closed took its share back
        assert merged("clara_active_sessions") == 2
        assert merged("clara_outbox_pending") == 5

        await first.stop()  # ended without closing its agent, as a crashed job does
        assert merged("clara_agent_unhealthy") == 1  # until the worker sweeps it
        assert sweep_dead_processes(folder) == sorted([first.pid, second.pid])

    assert telemetry.agents_figures(folder).unhealthy == 0
    assert merged("clara_agent_unhealthy") == 0
    assert merged("clara_active_sessions") == 0
    assert registry.get_sample_value("clara_memory_mb") is None  # no live process left
    # counters and histograms keep what ended processes counted
    assert merged("clara_errors_total", source="provider") == 2
    assert merged("clara_turn_latency_seconds_count", stage="e2e") == 2
    assert merged("clara_reconnections_total") == 1


def test_the_workers_folder_exists_for_the_run_and_is_removed_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(telemetry.MULTIPROC_ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    killed = tmp_path / f"{telemetry.METRICS_DIR_PREFIX}{dead_pid}-abc"  # a SIGKILLed worker's
    running = tmp_path / f"{telemetry.METRICS_DIR_PREFIX}{os.getppid()}-def"
    for folder in (killed, running):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"")
    value_class = values.ValueClass
    with telemetry.multiprocess_dir() as folder:
        assert folder.is_dir()
        assert folder.parent == tmp_path
        assert folder.name.startswith(f"{telemetry.METRICS_DIR_PREFIX}{os.getpid()}-")
        assert not killed.exists()
        assert running.exists()
        assert os.environ[telemetry.MULTIPROC_ENV] == str(folder)  # for the job processes
        assert values.ValueClass._multiprocess  # and this process's metrics from now on
    assert not folder.exists()
    assert telemetry.MULTIPROC_ENV not in os.environ
    assert values.ValueClass is value_class


def test_an_operators_folder_is_used_and_left_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = tmp_path / "prometheus"
    given.mkdir()
    monkeypatch.setenv(telemetry.MULTIPROC_ENV, str(given))
    with telemetry.multiprocess_dir() as folder:
        assert folder == given
    assert given.is_dir()
    assert os.environ[telemetry.MULTIPROC_ENV] == str(given)
    assert sweep_dead_processes(tmp_path / "not-made-yet") == []
