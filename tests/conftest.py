from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from livekit.agents import JobContext, JobExecutorType, JobProcess
from livekit.agents.job import JobAcceptArguments, RunningJobInfo
from livekit.protocol import agent as agent_pb
from livekit.protocol import models
from pydantic import SecretStr

from clara_voice.agent.agent import ClaraVoiceAgent
from clara_voice.config import Settings, load_settings
from testkit.fakes import FakePipelineFactory, FakeRoom
from testkit.postgres import PostgresServer


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer .env or exported variable leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("CLARA_", "LIVEKIT_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data")


@pytest.fixture
def room() -> FakeRoom:
    return FakeRoom()


@pytest.fixture
def factory() -> FakePipelineFactory:
    return FakePipelineFactory()


@pytest.fixture
async def agent(
    room: FakeRoom, settings: Settings, factory: FakePipelineFactory
) -> AsyncIterator[ClaraVoiceAgent]:
    agent = ClaraVoiceAgent(room, settings, pipeline=factory)
    await agent.start()
    yield agent
    await agent.aclose()


class _NoInference:
    async def do_inference(self, method: str, data: bytes) -> bytes | None:
        raise AssertionError("no inference expected")


@pytest.fixture
def shutdowns() -> list[str]:
    return []


@pytest.fixture
async def job_ctx(room: FakeRoom, shutdowns: list[str]) -> AsyncIterator[JobContext]:
    info = RunningJobInfo(
        accept_arguments=JobAcceptArguments(name="", identity="agent-clara", metadata=""),
        job=agent_pb.Job(
            id="AJ_test",
            type=agent_pb.JobType.JT_ROOM,
            room=models.Room(sid="RM_1", name=room.name),
        ),
        url="ws://127.0.0.1:1",
        token="token",
        worker_id="AW_test",
        fake_job=False,
    )
    # jobs run in their own process in the worker (livekit's default executor)
    proc = JobProcess(executor_type=JobExecutorType.PROCESS, user_arguments=None, http_proxy=None)
    ctx = JobContext(
        proc=proc,
        info=info,
        room=room,  # type: ignore[arg-type]
        on_connect=lambda: None,
        on_shutdown=shutdowns.append,
        inference_executor=_NoInference(),
    )
    yield ctx
    await ctx._on_cleanup()  # what livekit's job runner does after the shutdown callbacks


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (started by the first test that asks)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[SecretStr]:
    """``CLARA_DATABASE_URL`` of a new empty database of its own, dropped after the test."""
    if not postgres_server.running:  # a test that stopped it failed before starting it again
        postgres_server.start()
    name = postgres_server.create_database()
    yield SecretStr(postgres_server.dsn(name))
    if not postgres_server.running:
        postgres_server.start()
    postgres_server.drop_database(name)
