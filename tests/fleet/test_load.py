"""The worker's load is its own (issue 17, item 1): its process tree's CPU against the cores
it is given, its sessions against CLARA_MAX_SESSIONS, full while an agent is in trouble;
never the machine's."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from clara_voice.fleet.load import (
    LoadReading,
    TreeCPU,
    WorkerLoad,
    allotted_cores,
    default_max_sessions,
)


def burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_another_programs_cpu_is_not_the_workers_load() -> None:
    """Regression (issue 17, item 1; issue 19's demo): livekit's default load is the whole
    machine's CPU, so a worker on a machine other programs keep busy declined every job."""
    hog = multiprocessing.get_context("spawn").Process(target=burn, args=(3.0,))
    hog.start()  # a child of the test process, not of the "worker" measured below
    try:
        helper = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(3.0,))
        helper.start()
        tree = TreeCPU(helper.pid, cores=1.0)
        tree.sample()
        time.sleep(1.0)
        assert tree.sample() < 0.2  # the hog burns a whole core next to it
        helper.join()
    finally:
        hog.join()


def test_the_trees_own_cpu_counts_its_children_too() -> None:
    clock = Clock()
    tree = TreeCPU(cores=1.0, clock=clock)
    tree.sample()
    child = multiprocessing.get_context("spawn").Process(target=burn, args=(0.6,))
    child.start()
    child_pid = child.pid
    deadline = time.monotonic() + 10
    share = 0.0
    while child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
        clock.now += 0.2
        share = tree.sample()
    child.join()
    assert child_pid is not None
    assert share > 0.3  # the child's burning shows in the parent's tree


def test_two_reads_moments_apart_say_nothing_of_the_load() -> None:
    """Regression: livekit reads the load again just before every job offer; a worker whose
    tree used some CPU in the moment since the last read read full, and declined."""
    hog = multiprocessing.get_context("spawn").Process(target=burn, args=(2.0,))
    hog.start()  # the tree busy: every read sees CPU used
    try:
        tree = TreeCPU(cores=1.0)
        tree.sample()
        time.sleep(0.1)  # a CPU clock tick or ten, well under MIN_SPAN
        assert tree.sample() == 0.0
    finally:
        hog.join()


def test_the_cores_given_are_the_cgroup_quota_when_there_is_one(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    assert allotted_cores(tmp_path) == cpus  # no cgroup files: the CPUs it may run on
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert allotted_cores(tmp_path) == pytest.approx(0.5)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert allotted_cores(tmp_path) == cpus
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert allotted_cores(tmp_path) == pytest.approx(min(1.5, cpus))


def test_the_load_is_the_largest_of_cpu_sessions_and_trouble() -> None:
    reading = LoadReading(cpu=0.2, sessions=3, max_sessions=10, unhealthy_agents=0)
    assert reading.value == pytest.approx(0.3)
    assert "3 sessions of CLARA_MAX_SESSIONS=10" in reading.why(0.3)
    assert LoadReading(cpu=0.9, sessions=0, max_sessions=10, unhealthy_agents=0).value == 0.9
    trouble = LoadReading(cpu=0.0, sessions=0, max_sessions=10, unhealthy_agents=1)
    assert trouble.value == 1.0 and "health check" in trouble.why(0.7)


def test_a_worker_with_its_sessions_full_reads_full() -> None:
    sessions = [0]
    load = WorkerLoad(max_sessions=4, sessions=lambda: sessions[0], unhealthy=lambda: 0)
    assert load.read() < 0.7
    sessions[0] = 4
    assert load.read() == 1.0
    assert load.last.sessions == 4


def test_the_default_capacity_follows_the_cores() -> None:
    assert default_max_sessions(2.0) == 10
    assert default_max_sessions(0.25) == 2
