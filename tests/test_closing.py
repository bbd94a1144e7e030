"""Bounded waits for closing things (src/clara_voice/_closing.py).

Regression (issue 17, item 5): a closing job waited without limit for work that never
ends (an unpublish the server never answers once the room is deleted), and
``asyncio.wait_for`` is no bound for work that does not end when cancelled: it waits for
the cancelled work as long as that takes. Here the work that "never ends" ignores its
cancellation outright, so a wait that returns at all was bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from clara_voice import _closing
from clara_voice._closing import (
    cancel_within,
    finish_within,
    session_end_timeout,
    within,
)
from clara_voice.logging import get_logger
from testkit.tasks import Stubborn

LOG = get_logger("clara_voice.test")


@pytest.fixture
async def stubborn(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stubborn]:
    monkeypatch.setattr(_closing, "CANCEL_GRACE", 0.05)
    work = Stubborn()
    yield work
    await work.finish()


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING]


async def test_work_that_finishes_in_time_is_awaited_and_its_failure_raised() -> None:
    async def answer() -> None:
        await asyncio.sleep(0)

    async def fail() -> None:
        raise ValueError("no")

    assert await within(answer(), 1.0, what="answer", log=LOG)
    with pytest.raises(ValueError, match="no"):
        await within(fail(), 1.0, what="fail", log=LOG)


async def test_work_past_its_limit_is_cancelled_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cancelled = asyncio.Event()

    async def hang() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    assert not await within(hang(), 0.01, what="hanging", log=LOG)
    assert cancelled.is_set()
    [said] = warnings(caplog)
    assert said.getMessage() == "did not finish in time, cancelled"
    assert said.__dict__["what"] == "hanging"
    with pytest.raises(TimeoutError, match="hanging"):
        await finish_within(hang(), 0.01, what="hanging", log=LOG)


async def test_work_that_ignores_its_cancellation_is_left_behind_and_named(
    stubborn: Stubborn, caplog: pytest.LogCaptureFixture
) -> None:
    assert not await within(stubborn.run(), 0.01, what="unpublishing", log=LOG)

    assert stubborn.cancels == 1
    [said] = warnings(caplog)
    assert said.getMessage() == "did not finish in time, left behind"
    assert said.__dict__["left"] == ["clara.closing.unpublishing"]
    assert not stubborn.release.is_set()  # still running: left behind, not waited for


async def test_tasks_that_ignore_their_cancellation_are_returned(stubborn: Stubborn) -> None:
    async def quick() -> None:
        await asyncio.Event().wait()

    tasks = [asyncio.create_task(stubborn.run(), name="stuck"), asyncio.create_task(quick())]
    await stubborn.started.wait()

    left = await cancel_within(tasks, what="tasks", log=LOG)

    assert left == {tasks[0]}
    assert tasks[1].cancelled()


async def test_a_cancelled_caller_cancels_the_work_and_does_not_wait_for_it(
    stubborn: Stubborn,
) -> None:
    caller = asyncio.create_task(within(stubborn.run(), 60.0, what="x", log=LOG))
    await stubborn.started.wait()

    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller  # at once, although the work goes on

    assert stubborn.cancels == 1


@pytest.mark.parametrize("job_shutdown_timeout", [0.5, 1.0, 3.0, 4.0, 15.0, 30.0, 600.0])
def test_livekits_wait_for_the_jobs_close_ends_within_the_jobs_shutdown_timeout(
    job_shutdown_timeout: float,
) -> None:
    timeout = session_end_timeout(job_shutdown_timeout)
    assert job_shutdown_timeout / 2 <= timeout < job_shutdown_timeout
