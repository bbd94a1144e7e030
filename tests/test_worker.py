"""The worker's pieces in-process: the room-job entrypoint on a real JobContext, prewarm,
and the diagnostics for a LiveKit server that cannot be reached."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from livekit import rtc
from livekit.agents import JobContext, JobExecutorType, JobProcess, Plugin

from clara_voice import _closing
from clara_voice.agent.agent import CONNECT_FAILED_MESSAGE, ClaraVoiceAgent
from clara_voice.config import Settings, load_settings
from clara_voice.fleet import presence as presence_module
from clara_voice.fleet.presence import HEARTBEAT_ATTRIBUTE
from clara_voice.logging import LEVELLED_LOGGERS
from clara_voice.persistence.sqlite import DB_FILENAME
from clara_voice.worker import (
    AGENTS_USERDATA_KEY,
    VAD_USERDATA_KEY,
    ClaraWorker,
    _ConnectionWatch,
    describe_connection_error,
    end_of_job,
    entrypoint,
    prewarm,
)
from testkit.fakes import FakeRoom, fake_factory, slow_closing_factory
from testkit.tasks import Stubborn, settle
from testkit.worker import free_port


async def run_shutdown_callbacks(ctx: JobContext) -> None:
    for callback in ctx._shutdown_callbacks:
        await callback("test over")


async def test_room_connection_failure_logs_the_critical_message_and_ends_the_job(
    job_ctx: JobContext,
    room: FakeRoom,
    settings: Settings,
    shutdowns: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    room.connect_error = rtc.ConnectError("engine: signal failure: 403 Forbidden")
    listeners = room.listener_count()

    await entrypoint(job_ctx, settings=settings, pipeline_factory=fake_factory)

    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert [r.getMessage() for r in critical] == [CONNECT_FAILED_MESSAGE]
    assert critical[0].job_id == "AJ_test"  # type: ignore[attr-defined]
    assert critical[0].room == room.name  # type: ignore[attr-defined]
    assert "403" in critical[0].error  # type: ignore[attr-defined]
    assert shutdowns == ["room connection failed"]
    assert room.listener_count() == listeners  # the agent never started following the room
    await run_shutdown_callbacks(job_ctx)  # the job's shutdown closes the agent cleanly


async def test_entrypoint_runs_one_agent_for_the_room_and_closes_it_at_shutdown(
    job_ctx: JobContext, room: FakeRoom, settings: Settings, shutdowns: list[str]
) -> None:
    room.join("alice")

    await entrypoint(job_ctx, settings=settings, pipeline_factory=fake_factory)
    await settle()
    assert room.listener_count() > 1  # the job context's own and the agent's

    assert room.connect_calls == [("ws://127.0.0.1:1", "token")]
    assert job_ctx.log_context_fields["job_id"] == "AJ_test"
    assert job_ctx.log_context_fields["room"] == room.name
    assert len(job_ctx._shutdown_callbacks) == 1
    room.join("bob")
    await settle()

    await run_shutdown_callbacks(job_ctx)
    # what is left is the job context's own listener, nothing of the agent's
    left = [cb for callbacks in room._events.values() for cb in callbacks]
    assert left
    assert all(getattr(cb, "__self__", None) is job_ctx for cb in left)
    assert shutdowns == []


async def test_the_job_beats_from_the_moment_it_is_in_the_room_while_its_agent_starts(
    job_ctx: JobContext, room: FakeRoom, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (issue 17, 20 rooms at once on 2 cores): the heartbeat began once the
    agent had started; an overloaded machine took longer than CLARA_AGENT_DEAD_AFTER to
    start it, and the watchers removed Claras that were still starting as dead ones."""
    beats: list[dict[str, str]] = []
    beating = threading.Event()

    def send(_: object, attributes: dict[str, str]) -> None:  # on the heartbeat's thread
        beats.append(attributes)
        beating.set()

    monkeypatch.setattr(presence_module, "send_attributes", send)
    release = asyncio.Event()
    real_start = ClaraVoiceAgent.start

    async def slow_start(agent: ClaraVoiceAgent) -> None:
        await release.wait()  # a job process starved of CPU
        await real_start(agent)

    monkeypatch.setattr(ClaraVoiceAgent, "start", slow_start)
    room.join("alice")
    job = asyncio.create_task(entrypoint(job_ctx, settings=settings, pipeline_factory=fake_factory))
    assert await asyncio.to_thread(beating.wait, 5)
    assert not job.done()  # beating, and the agent is still starting
    assert HEARTBEAT_ATTRIBUTE in beats[0]
    release.set()
    await job
    await run_shutdown_callbacks(job_ctx)


def test_prewarm_loads_the_bundled_vad_once_per_process(settings: Settings) -> None:
    from livekit.agents import vad

    proc = JobProcess(executor_type=JobExecutorType.THREAD, user_arguments=None, http_proxy=None)
    prewarm(proc, settings=settings)
    assert isinstance(proc.userdata[VAD_USERDATA_KEY], vad.VAD)


def test_worker_is_configured_from_settings_and_its_callbacks_pickle(settings: Settings) -> None:
    """Regression: job processes receive the entrypoint and prewarm by pickling (forkserver)."""
    worker = ClaraWorker(settings)
    assert worker._entrypoint_fnc is not None and worker.setup_fnc is not None
    entry = pickle.loads(pickle.dumps(worker._entrypoint_fnc))
    setup = pickle.loads(pickle.dumps(worker.setup_fnc))
    assert entry.keywords["settings"] == settings
    assert setup.keywords["settings"] == settings
    assert worker._ws_url == settings.livekit_url
    assert worker._max_retry == settings.livekit_max_retry


def _livekit_warning(error: BaseException) -> logging.LogRecord:
    message = "failed to connect to livekit, retrying in 4s"
    record = logging.LogRecord("livekit.agents", logging.WARNING, __file__, 1, message, None, None)
    record.retry_count = 3
    record.max_retry = 16
    record.error = error
    return record


def test_connection_failures_become_one_clear_line_and_registration_makes_the_worker_live(
    settings: Settings,
) -> None:
    worker = ClaraWorker(settings)
    watch = _ConnectionWatch(worker)
    record = _livekit_warning(aiohttp.ClientConnectionError("connection refused"))

    assert watch.filter(record)
    line = record.getMessage()
    assert line.startswith(f"cannot reach the LiveKit server at {settings.livekit_url}")
    assert "LIVEKIT_URL" in line
    assert "retrying in 4s (retry 3/16)" in line
    assert not worker.live and not worker.registered
    assert isinstance(worker.last_connection_error, aiohttp.ClientConnectionError)

    worker._on_registered("AW_1")
    assert worker.live and worker.registered
    assert not worker._connection_failed  # livekit's health endpoint answers 200

    watch.filter(_livekit_warning(aiohttp.ClientConnectionError("connection reset")))
    assert not worker.registered  # reconnecting: livekit retries, and gives up by exiting
    assert worker.live and not worker._connection_failed  # the jobs carry on: still live


def test_rejected_credentials_name_the_key_variables() -> None:
    error = aiohttp.WSServerHandshakeError(None, (), status=401, message="unauthorized")  # type: ignore[arg-type]
    line = describe_connection_error("ws://lk:7880", error)
    assert "rejected the worker's credentials" in line
    assert "LIVEKIT_API_KEY" in line and "LIVEKIT_API_SECRET" in line


def test_giving_up_without_a_known_reason_names_every_variable_to_check() -> None:
    """With CLARA_LIVEKIT_MAX_RETRY=0 livekit gives up at once and drops the reason: the line
    named an unreachable server even when the server refused the keys."""
    line = describe_connection_error("ws://lk:7880", None)
    assert "cannot reach" not in line
    assert all(v in line for v in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"))


def test_the_give_up_traceback_is_replaced_by_the_workers_own_line(settings: Settings) -> None:
    watch = _ConnectionWatch(ClaraWorker(settings))
    try:
        raise RuntimeError("failed to connect to livekit after 16 attempts")
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            "livekit.agents",
            logging.ERROR,
            __file__,
            1,
            "Error in _connection_task",
            None,
            sys.exc_info(),
        )
    assert not watch.filter(record)


async def test_a_room_job_gets_the_real_pipeline_with_the_process_vad(settings: Settings) -> None:
    from livekit.agents.utils import http_context

    from clara_voice.voice.pipeline import LiveKitPipelineFactory
    from clara_voice.worker import build_pipeline_factory

    proc = JobProcess(executor_type=JobExecutorType.THREAD, user_arguments=None, http_proxy=None)
    prewarm(proc, settings=settings)
    http_context._new_session_ctx()
    try:
        factory = build_pipeline_factory(settings, proc)
        assert isinstance(factory, LiveKitPipelineFactory)
        await factory.aclose()
        await factory.aclose()
    finally:
        await http_context._close_http_ctx()


def test_prewarm_loads_the_end_of_turn_model_only_when_it_is_used(tmp_path: Any) -> None:
    from clara_voice.config import load_settings
    from clara_voice.worker import EOT_USERDATA_KEY

    proc = JobProcess(executor_type=JobExecutorType.THREAD, user_arguments=None, http_proxy=None)
    prewarm(proc, settings=load_settings(turn_detection="vad"))
    assert EOT_USERDATA_KEY not in proc.userdata
    prewarm(proc, settings=load_settings(turn_detection="eot"))
    assert proc.userdata[EOT_USERDATA_KEY].model == "turn-detector-v1-mini"


def test_prewarm_builds_the_vad_with_the_turn_detections_own_silence() -> None:
    """The VAD of `vad` turn detection waits 0.5 s of silence, not the 0.2 s that cut every
    pause; the default `combined` 0.3 s; a setting wins over both."""
    from clara_voice.config import load_settings
    from clara_voice.worker import VAD_USERDATA_KEY

    proc = JobProcess(executor_type=JobExecutorType.THREAD, user_arguments=None, http_proxy=None)
    for settings, silence in [
        (load_settings(turn_detection="vad"), 0.5),
        (load_settings(), 0.3),
        (load_settings(turn_detection="vad", vad_min_silence_duration=0.7), 0.7),
    ]:
        prewarm(proc, settings=settings)
        assert proc.userdata[VAD_USERDATA_KEY].min_silence_duration == silence


def stored_summaries(settings: Settings) -> list[str]:
    with sqlite3.connect(settings.data_dir / DB_FILENAME) as db:
        rows = db.execute("SELECT participant FROM sessions ORDER BY participant").fetchall()
    return [r[0] for r in rows]


def ending_events(room: FakeRoom) -> list[str]:
    """Who was sent a ``clara.sync`` event saying its session is ending."""
    return [
        to[0]
        for topic, payload, to in room.local_participant.published
        if topic == "clara.sync" and json.loads(payload)["payload"]["config"]["state"] == "ending"
    ]


async def test_the_jobs_shutdown_ends_every_session_while_the_room_is_still_connected(
    job_ctx: JobContext, room: FakeRoom, settings: Settings
) -> None:
    """livekit's own order (ipc/job_proc_lazy_main.py ``_shutdown_job``): the worker's
    on_session_end, then the room's disconnect, then the shutdown callbacks.

    Regression: at shutdown the sync service closed before the sessions were cleaned up,
    so no client got its ``ending`` event."""
    worker = ClaraWorker(settings)
    assert worker._session_end_fnc is end_of_job
    room.join("alice")
    room.join("bob")
    await entrypoint(job_ctx, settings=settings, pipeline_factory=fake_factory)
    await settle()

    await end_of_job(job_ctx)
    assert sorted(ending_events(room)) == ["alice", "bob"]  # sent with the room still there
    assert room.isconnected()
    await room.disconnect()
    await run_shutdown_callbacks(job_ctx)

    assert stored_summaries(settings) == ["alice", "bob"]


async def test_a_room_lost_before_the_shutdown_still_persists_every_summary(
    job_ctx: JobContext, room: FakeRoom, settings: Settings
) -> None:
    """Regression: a normal job shutdown lost every session summary. livekit disconnects the
    room before the shutdown callbacks run; the disconnect started a cleanup per session,
    those took the sessions out of the map, and the agent's close then found no sessions and
    cancelled the cleanups before their summaries were written."""
    room.join("alice")
    room.join("bob")
    await entrypoint(job_ctx, settings=settings, pipeline_factory=slow_closing_factory)
    await settle()

    await room.disconnect()
    await run_shutdown_callbacks(job_ctx)

    assert stored_summaries(settings) == ["alice", "bob"]


# -- issue 11: hardening settings reach livekit and the operator -------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """ClaraWorker.run configures logging for the whole process: put it back afterwards."""
    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    named = [*LEVELLED_LOGGERS, *(p.logger.name for p in Plugin.registered_plugins if p.logger)]
    levels = {name: logging.getLogger(name).level for name in named}
    yield
    root.handlers[:] = handlers
    root.setLevel(root_level)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)


def test_job_memory_settings_reach_livekits_process_pool(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """issue 11: CLARA_JOB_MEMORY_WARN_MB and CLARA_JOB_MEMORY_LIMIT_MB are the job process
    memory bounds livekit's AgentServer hands its process pool (not livekit's defaults,
    1000 MB warn and no limit)."""
    monkeypatch.setenv("CLARA_JOB_MEMORY_WARN_MB", "640")
    monkeypatch.setenv("CLARA_JOB_MEMORY_LIMIT_MB", "1536.5")

    worker = ClaraWorker(load_settings(data_dir=tmp_path / "data"))

    # the options AgentServer.run passes to ProcPool as memory_warn_mb / memory_limit_mb
    assert worker._job_memory_warn_mb == 640
    assert worker._job_memory_limit_mb == 1536.5


async def test_a_token_over_plain_http_is_allowed_when_asked_and_the_worker_warns_at_start(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    """issue 11: CLARA_BACKEND_ALLOW_INSECURE_HTTP=true lets CLARA_BACKEND_TOKEN go over
    plain http to another host (the settings load), and the worker says so in a warning
    line when it starts. The backend is never contacted (no job runs); LiveKit is a closed
    loopback port, so the worker gives up at once."""
    backend_url = "http://192.0.2.10:8080/api"  # TEST-NET-1: not this machine, never reached
    token = "tok-plain-http-4411"
    monkeypatch.setenv("CLARA_BACKEND", "http")
    monkeypatch.setenv("CLARA_BACKEND_URL", backend_url)
    monkeypatch.setenv("CLARA_BACKEND_TOKEN", token)
    monkeypatch.setenv("CLARA_BACKEND_ALLOW_INSECURE_HTTP", "true")
    settings = load_settings(
        data_dir=tmp_path / "data",
        livekit_url=f"ws://127.0.0.1:{free_port()}",
        livekit_max_retry=0,
        http_host="127.0.0.1",
        http_port=0,
        prometheus_port=None,
        num_idle_processes=0,
    )
    assert settings.backend_token_in_clear()

    worker = ClaraWorker(settings)
    try:
        await worker.run()  # `start`: JSON lines on stdout
    finally:
        await worker.aclose()  # livekit leaves its HTTP server and session open when it gives up
    assert worker.gave_up

    output = capsys.readouterr().out
    lines = [json.loads(line) for line in output.splitlines()]
    assert lines[0] | {"timestamp": None} == {  # the first line, before livekit's own
        "event": "CLARA_BACKEND_TOKEN goes to the backend over plain http, readable on the way "
        "(CLARA_BACKEND_ALLOW_INSECURE_HTTP=true)",
        "level": "warning",
        "logger": "clara_voice.worker",
        "backend_url": backend_url,
        "timestamp": None,
    }
    assert any(line["logger"] == "livekit.agents" for line in lines[1:])
    assert token not in output


async def test_a_participant_who_leaves_just_before_the_shutdown_still_gets_its_summary(
    job_ctx: JobContext, room: FakeRoom, settings: Settings
) -> None:
    """Regression (issue 16, item 5): the cleanup of a participant who had just left ran in
    the leave task, which the agent's close cancelled: its summary was never written."""
    room.join("alice")
    room.join("bob")
    await entrypoint(job_ctx, settings=settings, pipeline_factory=slow_closing_factory)
    await settle()

    room.leave("alice")  # its cleanup is under way (the pipeline takes 0.5 s to close)…
    await asyncio.sleep(0)
    await end_of_job(job_ctx)  # …when the job shuts down
    await room.disconnect()
    await run_shutdown_callbacks(job_ctx)

    assert stored_summaries(settings) == ["alice", "bob"]


async def test_sessions_close_together_at_shutdown_within_the_bound_whatever_their_number(
    job_ctx: JobContext, room: FakeRoom, tmp_path: Path
) -> None:
    """Regression (issue 16, item 5): sessions were closed one after the other at shutdown,
    so a room of many took many times a pipeline's close, past livekit's kill."""
    settings = load_settings(
        data_dir=tmp_path / "data", max_sessions_per_room=40, job_shutdown_timeout=8.0
    )
    for n in range(40):
        room.join(f"guest-{n:02d}")
    await entrypoint(job_ctx, settings=settings, pipeline_factory=slow_closing_factory)
    await settle()

    loop = asyncio.get_running_loop()
    started = loop.time()
    await end_of_job(job_ctx)
    took = loop.time() - started
    await room.disconnect()
    await run_shutdown_callbacks(job_ctx)

    assert len(stored_summaries(settings)) == 40
    # 40 closes of 0.5 s one after the other would take 20 s; together, one close's worth
    assert took < settings.job_shutdown_timeout, took


async def test_the_jobs_close_ends_before_livekit_stops_waiting_whatever_the_agent_waits_for(
    job_ctx: JobContext,
    room: FakeRoom,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression (issue 17, item 5): livekit waited for the job's ``on_session_end`` for
    its ``session_end_timeout``, 300 s, whatever ``CLARA_JOB_SHUTDOWN_TIMEOUT`` said, and
    ``end_of_job`` waited for the agent's close as long as that took. Here the agent's
    close never ends, even when cancelled."""
    monkeypatch.setattr(_closing, "CANCEL_GRACE", 0.1)
    settings = load_settings(data_dir=tmp_path / "data", job_shutdown_timeout=4.0)
    assert ClaraWorker(settings)._session_end_timeout < settings.job_shutdown_timeout
    room.join("alice")
    await entrypoint(job_ctx, settings=settings, pipeline_factory=fake_factory)
    await settle()
    agent = job_ctx.proc.userdata[AGENTS_USERDATA_KEY][job_ctx.job.id]
    close, work = agent.aclose, Stubborn()
    agent.aclose = work.run
    try:
        await end_of_job(job_ctx)  # returns: the worker's bound is below livekit's

        assert work.cancels == 1
        [left] = [r for r in caplog.records if r.getMessage().endswith("left behind")]
        assert left.__dict__["what"] == "closing the agent"
    finally:
        await work.finish()
        await close()
    await room.disconnect()
    await run_shutdown_callbacks(job_ctx)
