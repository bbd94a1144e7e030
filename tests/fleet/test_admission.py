"""What a worker accepts, and what it says when it declines: through ClaraWorker and
livekit's own availability check, with the load's parts set by hand."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest

from clara_voice.config import Settings
from clara_voice.fleet.admission import Admission
from clara_voice.logging import get_logger
from clara_voice.worker import ClaraWorker

log = get_logger("test.admission")


def burst(worker: ClaraWorker) -> int:
    """Offers an idle worker accepts when they all come at once (livekit reserves a slot
    for each before its job launches)."""
    worker._devmode = False  # what `start` sets as it runs
    worker._worker_load = 0.0
    worker._reserved_slots = 0
    while worker._is_available() and worker._reserved_slots < 100:
        worker._reserved_slots += 1
    return worker._reserved_slots


def test_a_burst_of_rooms_to_an_idle_worker_is_taken_up_to_its_capacity(
    settings: Settings,
) -> None:
    """Regression (issue 17, 20 rooms at once): livekit counted each accepted job still
    starting as the threshold over its idle processes (0.35 to 0.7 of the load), so an idle
    worker declined the second or third room of a burst and those rooms waited for the
    watcher. A room is one session of CLARA_MAX_SESSIONS."""
    worker = ClaraWorker(settings)
    capacity = worker.admission.load.max_sessions
    assert burst(worker) == math.ceil(0.7 * capacity)  # production's threshold


def test_a_declined_offer_says_it_was_the_rooms_still_starting(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "clara_voice.worker")
    worker = ClaraWorker(settings)
    accepted = burst(worker)
    job = SimpleNamespace(id="AJ_1", room=SimpleNamespace(name="call"))
    worker.admission.declined(
        job,
        draining=False,
        threshold=0.7,
        effective=worker._get_effective_load(),
        starting=accepted,
    )
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"room job declined: {accepted} room job(s) it accepted are still")


def test_a_room_counts_until_its_agent_has_started_and_an_idle_one_never() -> None:
    """A room job holds a session until its agent has started and says what it holds.
    Regression (issue 17, 20 rooms at once on 2 cores): a job counted only until its agent
    had had a poll to report, but an overloaded machine takes longer than that to start
    an agent, so each worker took 8 or 9 rooms with a capacity of 7. And a room whose
    people left (LiveKit keeps it 20 s) is no session: it made a quiet worker decline."""
    jobs: list[str] = []
    admission = Admission(max_sessions=10, threshold=0.7, log=log, jobs=lambda: jobs)
    jobs += ["AJ_1", "AJ_2"]
    assert admission.load.read() == pytest.approx(0.2)  # launched, not reported yet
    for _ in range(3):  # polls go by while the machine is slow to start the agents
        admission.set_agents(unhealthy=0, sessions=0, running=0)
        assert admission.load.read() == pytest.approx(0.2)
    admission.set_agents(unhealthy=0, sessions=1, running=1)  # one agent started
    assert admission.load.read() == pytest.approx(0.2)
    admission.set_agents(unhealthy=0, sessions=3, running=2)  # both, one room has two people
    assert admission.load.read() == pytest.approx(0.3)
    admission.set_agents(unhealthy=0, sessions=0, running=2)  # the people left, the jobs linger
    assert admission.load.read() == pytest.approx(0.0)
    jobs.remove("AJ_1")  # a job ended before the next poll: no room is counted twice
    assert admission.load.read() == pytest.approx(0.0)
