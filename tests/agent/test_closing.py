"""The agent's close within its budget (src/clara_voice/agent/closing.py).

Regression (issue 17, item 5): the agent's close waited for each session's cleanup as long
as it took, also after cancelling it, and a cleanup waited for its pipeline's close as long
as that took: a close that never ended (an unpublish the server never answers once the
room is deleted) held the job process until livekit gave up on it, 300 s later. The
AgentSession closes here ignore their cancellation outright, so a close that returns at
all was bounded.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc

from clara_voice import _closing
from clara_voice.agent import closing
from clara_voice.agent.agent import ClaraVoiceAgent
from clara_voice.agent.closing import ClosePlan, backstop, close_budget
from clara_voice.config import Settings, load_settings
from clara_voice.logging import get_logger
from clara_voice.persistence.factory import build_backend
from clara_voice.persistence.sqlite import DB_FILENAME
from clara_voice.voice.pipeline import LiveKitPipeline
from clara_voice.voice.turns import EffectiveConfig, expected_effective
from testkit.fakes import FakeRoom
from testkit.tasks import Stubborn, other_tasks, settle

JOB_SHUTDOWN = 8.0


class HungSession(rtc.EventEmitter[str]):
    """An AgentSession whose close never ends, even when cancelled (a provider that never
    lets go, an answer the server never sends)."""

    def __init__(self, work: Stubborn) -> None:
        super().__init__()
        self._work = work

    async def aclose(self) -> None:
        await self._work.run()


class HungPipeline(LiveKitPipeline):
    """The real pipeline around a :class:`HungSession`."""

    def effective(self) -> EffectiveConfig:
        return expected_effective(self.session_type)


class HungFactory:
    def __init__(self, work: Stubborn, settings: Settings) -> None:
        self._work = work
        self._settings = settings

    async def start(self, *, participant: rtc.RemoteParticipant, **kwargs: Any) -> HungPipeline:
        return HungPipeline(
            agent_session=HungSession(self._work),  # type: ignore[arg-type]
            identity=participant.identity,
            session_type=kwargs["session_type"],
            events=kwargs["events"],
            settings=self._settings,
            eot=lambda: None,
            log=kwargs["log"],
        )

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def work(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stubborn]:
    """Closes that never end; short waits (the test is whether the close ends at all)."""
    monkeypatch.setattr(closing, "MIN_SESSIONS_CLOSE", 0.1)
    monkeypatch.setattr(_closing, "CANCEL_GRACE", 0.1)
    work = Stubborn()
    yield work
    await work.finish()


def stored_summaries(settings: Settings) -> list[str]:
    with sqlite3.connect(settings.data_dir / DB_FILENAME) as db:
        rows = db.execute("SELECT participant FROM sessions ORDER BY participant").fetchall()
    return [r[0] for r in rows]


async def test_a_session_whose_pipeline_never_closes_ends_with_its_summary_and_so_does_the_close(
    work: Stubborn, room: FakeRoom, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(data_dir=tmp_path / "data", job_shutdown_timeout=JOB_SHUTDOWN)
    agent = ClaraVoiceAgent(
        room, settings, pipeline=HungFactory(work, settings), backend=build_backend(settings)
    )
    await agent.start()
    room.join("alice")
    room.join("bob")
    await settle()
    room.leave("alice")  # alice's cleanup is under way when the job closes
    await work.started.wait()

    await agent.aclose()

    assert stored_summaries(settings) == ["alice", "bob"]
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "sessions did not close in time" in said
    assert work.cancels == 2  # each AgentSession's close was cancelled, and left behind
    await work.finish()
    assert not [t for t in other_tasks() if t.get_name().startswith("clara.")]


async def test_the_close_plan_keeps_the_time_its_later_steps_need(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    plan = ClosePlan(settings, get_logger("clara_voice.test"))
    after = _closing.CANCEL_GRACE  # margin for the time the test itself takes
    assert close_budget(settings) - after < plan.left() <= close_budget(settings)
    assert plan.left(keep=close_budget(settings) + 1) == 0.0
    assert close_budget(settings) < backstop(settings)
    assert backstop(settings) + _closing.CANCEL_GRACE < _closing.session_end_timeout(
        settings.job_shutdown_timeout
    )
