"""The worker's health and load and its agents (seed 002), in-process: the agents'
``clara_agent_unhealthy`` fills the worker's load (never its health endpoint), and reading
the metrics folder drops the gauges of job processes that ended."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import Gauge, values

from clara_voice import telemetry
from clara_voice.config import Settings
from clara_voice.worker import ClaraWorker

TROUBLE = "worker takes no new jobs: agents fail their health check"
RECOVERED = "agents pass their health check again, the worker takes new jobs"

Writer = Callable[[int, float], None]


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "clara_voice.worker"]


def unused_pid() -> int:
    """A pid no process has (above the kernel's largest)."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


@pytest.fixture
def write_unhealthy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Writer]:
    """Sets ``clara_agent_unhealthy`` in ``tmp_path`` as the process ``pid`` would."""
    monkeypatch.setenv(telemetry.MULTIPROC_ENV, str(tmp_path))
    classes = []

    def write(pid: int, value: float) -> None:
        value_class = values.MultiProcessValue(lambda: pid)
        classes.append(value_class)
        monkeypatch.setattr(values, "ValueClass", value_class)
        gauge = Gauge("clara_agent_unhealthy", "", multiprocess_mode="livesum", registry=None)
        gauge.set(value)

    yield write
    for value_class in classes:
        value_class.close_all_files()


def test_an_agent_in_trouble_fills_the_workers_load_and_never_its_health_endpoint(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's load (what LiveKit dispatches by) is its own, or 1.0 while any agent
    fails its health check; its health endpoint, a liveness probe, only says that
    the process is up and registered."""
    caplog.set_level(logging.INFO, "clara_voice.worker")
    worker = ClaraWorker(settings)
    worker._on_registered("AW_1")
    assert worker.live and not worker._connection_failed
    assert worker._load() < 1.0  # its own processes' CPU and sessions
    caplog.clear()  # "worker registered with LiveKit"

    worker.admission.set_agents(unhealthy=2, sessions=0, running=0)
    assert worker._load() == 1.0  # above any load threshold: no new jobs
    worker.admission.set_agents(unhealthy=1, sessions=0, running=0)  # still in trouble: logged once
    assert messages(caplog) == [TROUBLE]
    trouble = next(r for r in caplog.records if r.getMessage() == TROUBLE)
    assert trouble.levelno == logging.WARNING
    assert trouble.unhealthy_agents == 2  # type: ignore[attr-defined]
    assert worker.live and not worker._connection_failed

    worker.admission.set_agents(unhealthy=0, sessions=0, running=0)
    assert worker._load() < 1.0
    assert messages(caplog) == [TROUBLE, RECOVERED]


async def test_check_agents_reads_the_folder_and_drops_processes_that_ended(
    settings: Settings, tmp_path: Path, write_unhealthy: Writer
) -> None:
    alive = os.getppid()  # stands for a running job process
    ended = unused_pid()
    write_unhealthy(alive, 1)
    write_unhealthy(ended, 1)  # a job process that crashed while its agent was unhealthy
    worker = ClaraWorker(settings)
    worker._on_registered("AW_1")

    assert await worker.admission.check_agents(tmp_path) == 1
    assert worker._load() == 1.0
    assert worker.admission.unhealthy_agents == 1
    assert not (tmp_path / f"gauge_livesum_{ended}.db").exists()
    assert (tmp_path / f"gauge_livesum_{alive}.db").exists()

    write_unhealthy(alive, 0)  # its agent recovered
    assert await worker.admission.check_agents(tmp_path) == 0
    assert worker._load() < 1.0
