"""The worker's health endpoint and its agents (seed 002), in-process: the LiveKit
connection and the agents' ``clara_agent_unhealthy`` combine, and reading the metrics
folder drops the gauges of job processes that ended."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import Gauge, values

from clara_voice import telemetry
from clara_voice.config import Settings
from clara_voice.worker import ClaraWorker

UNHEALTHY = "worker unhealthy: agents fail their health check"
RECOVERED = "agents pass their health check again"

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


def test_the_health_endpoint_is_503_while_either_livekit_or_an_agent_says_so(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "clara_voice.worker")
    worker = ClaraWorker(settings)
    worker._on_registered("AW_1")
    assert worker.healthy

    worker._set_agents_health(2)
    assert not worker.healthy
    worker._set_agents_health(1)  # still unhealthy: logged once
    assert messages(caplog) == [UNHEALTHY]
    unhealthy = next(r for r in caplog.records if r.getMessage() == UNHEALTHY)
    assert unhealthy.levelno == logging.WARNING
    assert unhealthy.unhealthy_agents == 2  # type: ignore[attr-defined]

    worker._on_connection_failed(aiohttp.ClientConnectionError("connection refused"))
    worker._set_agents_health(0)
    assert not worker.healthy  # the agents are fine, the LiveKit connection is not
    assert messages(caplog) == [UNHEALTHY, RECOVERED]
    worker._on_registered("AW_1")
    assert worker.healthy

    worker._set_agents_health(1)
    worker._on_registered("AW_1")  # registering again does not hide an unhealthy agent
    assert not worker.healthy


async def test_check_agents_reads_the_folder_and_drops_processes_that_ended(
    settings: Settings, tmp_path: Path, write_unhealthy: Writer
) -> None:
    alive = os.getppid()  # stands for a running job process
    ended = unused_pid()
    write_unhealthy(alive, 1)
    write_unhealthy(ended, 1)  # a job process that crashed while its agent was unhealthy
    worker = ClaraWorker(settings)
    worker._on_registered("AW_1")

    assert await worker.check_agents(tmp_path) == 1
    assert not worker.healthy
    assert worker.unhealthy_agents == 1
    assert not (tmp_path / f"gauge_livesum_{ended}.db").exists()
    assert (tmp_path / f"gauge_livesum_{alive}.db").exists()

    write_unhealthy(alive, 0)  # its agent recovered
    assert await worker.check_agents(tmp_path) == 0
    assert worker.healthy
