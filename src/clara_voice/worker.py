"""The worker: livekit's AgentServer with clara_voice's prewarm, entrypoint and diagnostics.

``python -m clara_voice start`` runs livekit's CLI over a :class:`ClaraWorker`. The worker
process registers with the LiveKit server; every room job runs in a job process, where
:func:`prewarm` has already loaded the VAD once and :func:`entrypoint` builds exactly one
ClaraVoiceAgent for the room and registers its ``aclose`` with the job's shutdown.

The worker also says clearly when it cannot reach LiveKit: livekit retries the connection
with backoff and logs a terse warning; :class:`_ConnectionWatch` turns each one into one
line naming the URL and the variable to set.

Health (seed 002), for an orchestrator that restarts what fails its liveness probe: the
health endpoint (livekit's ``GET /``) says whether the *process* is alive. It answers 503
from start until the worker has registered with LiveKit, then 200 for as long as the
process runs; livekit exits the process when it gives up reconnecting. Trouble inside a job
never fails it: restarting the worker would drop every live call. An agent in trouble
(its loop stalled, its outbox backed up) instead makes the worker take no new jobs, through
livekit's load mechanism: the worker's load is livekit's own CPU measure, or 1.0 while any
agent fails its health check, and LiveKit sends jobs only to workers under
``CLARA_LOAD_THRESHOLD``.

Metrics: livekit's Prometheus endpoint (``CLARA_PROMETHEUS_PORT``) in multiprocess mode, so
it serves the job processes' metrics (:mod:`clara_voice.telemetry`) next to livekit's own.
The folder the processes write them to is made by :func:`telemetry.multiprocess_dir` when
the worker runs and removed when it stops; the worker reads its agents' health from it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from livekit import api
from livekit.agents import AgentServer, JobContext, JobProcess, inference
from livekit.agents.cli import AgentsConsole
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.utils import aio, is_given

from clara_voice import _livekit_worker, telemetry
from clara_voice._closing import CANCEL_GRACE, session_end_timeout, within
from clara_voice._livekit_worker import connection_failure, is_give_up_traceback, set_live
from clara_voice.agent.agent import CONNECT_FAILED_MESSAGE, ClaraVoiceAgent
from clara_voice.agent.closing import backstop
from clara_voice.config import Settings
from clara_voice.fleet.admission import Admission
from clara_voice.fleet.job import join_fleet, remember_conversation
from clara_voice.fleet.load import default_max_sessions
from clara_voice.fleet.watcher import RoomWatcher
from clara_voice.logging import RenderFormat, configure_logging, get_logger
from clara_voice.persistence.factory import build_backend
from clara_voice.voice.pipeline import LiveKitPipelineFactory
from clara_voice.voice.seams import PipelineFactory
from clara_voice.voice.turns import turn_timing

log = get_logger("clara_voice.worker")

VAD_USERDATA_KEY = "vad"
EOT_USERDATA_KEY = "eot"
AGENTS_USERDATA_KEY = "agents"
"""``proc.userdata[AGENTS_USERDATA_KEY]``: the running job's ClaraVoiceAgent, by job id."""

PRESENCE_USERDATA_KEY = "presence"
"""``proc.userdata[PRESENCE_USERDATA_KEY]``: the running job's AgentPresence, by job id."""


class ClaraWorker(AgentServer):
    """An AgentServer configured from :class:`Settings` and serving clara_voice jobs."""

    def __init__(self, settings: Settings) -> None:
        extra: dict[str, Any] = {}
        if settings.num_idle_processes is not None:
            extra["num_idle_processes"] = settings.num_idle_processes
        if settings.load_threshold is not None:
            extra["load_threshold"] = settings.load_threshold
        super().__init__(
            ws_url=settings.livekit_url,
            api_key=settings.livekit_api_key,
            api_secret=settings.livekit_api_secret.get_secret_value(),
            host=settings.http_host,
            port=settings.http_port,
            max_retry=settings.livekit_max_retry,
            drain_timeout=settings.drain_timeout,
            # closing a job closes its sessions and flushes the outbox, all within the close's
            # deadline (agent/closing.py); livekit's own wait for it ends before the job's
            # shutdown timeout, so that nothing the close waits for can hold the job longer
            shutdown_process_timeout=settings.job_shutdown_timeout,
            session_end_timeout=session_end_timeout(settings.job_shutdown_timeout),
            setup_fnc=partial(prewarm, settings=settings),
            prometheus_port=settings.prometheus_port,
            log_level=settings.log_level,  # the job processes' level too
            job_memory_warn_mb=settings.job_memory_warn_mb,
            job_memory_limit_mb=settings.job_memory_limit_mb,
            load_fnc=self._load,
            **extra,
        )
        self.admission = Admission(
            max_sessions=settings.max_sessions or default_max_sessions(),
            threshold=settings.load_threshold,
            log=log,
            jobs=self._job_ids,
        )
        self.settings = settings
        self.gave_up = False
        self.registered = False
        self.last_connection_error: object = None
        self.metrics_dir: Path | None = None
        """The multiprocess metrics folder, while the worker runs."""
        self.live = False
        """What the health endpoint says: the worker has registered with LiveKit."""
        self.watcher: RoomWatcher | None = None
        self._registered = asyncio.Event()
        self.rtc_session(
            partial(entrypoint, settings=settings),
            agent_name=settings.agent_name,
            on_session_end=end_of_job,
        )
        self.on("worker_registered", self._on_registered)

    async def run(self, *, devmode: bool = False, unregistered: bool = False) -> None:
        if not AgentsConsole.get_instance().enabled:  # console mode keeps livekit's TUI
            configure_logging(level=self.settings.log_level, fmt=self._log_format(devmode))
        if self.settings.backend_token_in_clear():
            log.warning(
                "CLARA_BACKEND_TOKEN goes to the backend over plain http, readable on the way "
                "(CLARA_BACKEND_ALLOW_INSECURE_HTTP=true)",
                extra={"backend_url": self.settings.backend_url},
            )
        if not unregistered:
            set_live(self, False)  # 503 until registered with the LiveKit server
        watch = _ConnectionWatch(self)
        livekit_logger = logging.getLogger("livekit.agents")
        livekit_logger.addFilter(watch)
        try:
            with telemetry.multiprocess_dir() as metrics_dir:
                # livekit sets PROMETHEUS_MULTIPROC_DIR from this before its job processes
                # start, and serves every process's metrics from it
                self._prometheus_multiproc_dir = str(metrics_dir)
                self.metrics_dir = metrics_dir
                log.info(
                    "metrics folder ready",
                    extra={"path": str(metrics_dir), "prometheus_port": self._prometheus_port},
                )
                tasks = [
                    asyncio.create_task(
                        self.admission.run(metrics_dir), name="clara.worker.agents_health"
                    )
                ]
                if not unregistered:
                    tasks.append(asyncio.create_task(self._watch_rooms(), name="clara.watcher"))
                try:
                    await super().run(devmode=devmode, unregistered=unregistered)
                finally:
                    await aio.cancel_and_wait(*tasks)
                    self.metrics_dir = None
        except RuntimeError as exc:
            if "failed to connect to livekit" not in str(exc):
                raise
            self.gave_up = True
            attempts = self.settings.livekit_max_retry + 1
            log.critical(
                f"giving up after {attempts} attempt{'s' if attempts > 1 else ''}: "
                + describe_connection_error(self.settings.livekit_url, self.last_connection_error)
                + " (or raise CLARA_LIVEKIT_MAX_RETRY)",
                extra={"url": self.settings.livekit_url},
            )
        finally:
            livekit_logger.removeFilter(watch)

    async def drain(self, timeout: NotGivenOr[int | None] = NOT_GIVEN) -> None:  # noqa: ASYNC109
        """SIGTERM: take no new jobs, wait for the running ones (``CLARA_DRAIN_TIMEOUT``);
        livekit's steps without its spin when two jobs end together (_livekit_worker)."""
        bound = timeout if is_given(timeout) else self.settings.drain_timeout
        await _livekit_worker.drain(self, bound)

    def _load(self) -> float:
        """The worker's load as LiveKit sees it: its own (fleet/load.py)."""
        return self.admission.read()

    def _job_ids(self) -> list[str]:
        """The room jobs running now (none before the worker runs)."""
        return [j.job.id for j in self.active_jobs] if hasattr(self, "_proc_pool") else []

    def _get_effective_load(self) -> float:
        # livekit adds to the load, for each job it accepted and has not launched yet, its
        # guess of one job's load (with none running: the threshold over its idle
        # processes, 0.35 to 0.7): a burst of rooms to an idle worker was declined from the
        # second or third on. A job here is a room, one session at least of the capacity.
        return self._worker_load + self._reserved_slots / self.admission.load.max_sessions

    async def _answer_availability(self, msg: Any, **kwargs: Any) -> None:
        # livekit declines a job the worker has no room for without a word (a private
        # method, the one place it decides): clara says why, once per job, and counts it
        await self._refresh_worker_load()
        if not self._is_available():
            threshold = self.settings.load_threshold or (math.inf if self._devmode else 0.7)
            self.admission.declined(
                msg.job,
                draining=self._draining,
                threshold=threshold,
                effective=self._get_effective_load(),
                starting=self._reserved_slots,
            )
        await super()._answer_availability(msg, **kwargs)

    async def _watch_rooms(self) -> None:
        """Every room with a person gets a live Clara (fleet/watcher.py), from the worker's
        first registration with the server on."""
        await self._registered.wait()
        settings = self.settings
        async with api.LiveKitAPI(
            settings.livekit_url,
            settings.livekit_api_key,
            settings.livekit_api_secret.get_secret_value(),
        ) as lkapi:
            self.watcher = RoomWatcher(
                lkapi,
                agent_name=settings.agent_name,
                interval=settings.room_watch_interval,
                dead_after=settings.agent_dead_after,
                log=log,
            )
            await self.watcher.run()

    def _on_connection_failed(self, error: object) -> None:
        # the live jobs carry on (their rooms are connections of their own) and livekit
        # retries, exiting when it gives up: the process stays live meanwhile
        self.registered = False
        self.last_connection_error = error

    def _on_registered(self, worker_id: str, server_info: Any = None, *_: Any) -> None:
        node = getattr(server_info, "node_id", "") or ""
        if self.last_connection_error is not None:
            log.info("connected to the LiveKit server", extra={"url": self.settings.livekit_url})
        log.info("worker registered with LiveKit", extra={"worker_id": worker_id, "node": node})
        telemetry.worker_info(worker_id=worker_id, node_id=node)
        self.registered = True
        self._registered.set()
        self.last_connection_error = None
        if not self.live:
            self.live = True
            set_live(self, True)

    def _log_format(self, devmode: bool) -> RenderFormat:
        if self.settings.log_format == "auto":
            return "console" if devmode else "json"
        return self.settings.log_format


class _ConnectionWatch(logging.Filter):
    """Rewrites livekit's "failed to connect to livekit" warning into one clear line."""

    _RETRY = re.compile(r"retrying in (\d+(?:\.\d+)?)s")

    def __init__(self, worker: ClaraWorker) -> None:
        super().__init__()
        self._worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        if is_give_up_traceback(record):
            return False  # the traceback of livekit giving up: ClaraWorker.run says it in a line
        failed, error = connection_failure(record)
        if not failed:
            return True
        url = self._worker.settings.livekit_url
        self._worker._on_connection_failed(error)
        retry = self._RETRY.search(str(record.msg))
        extra = record.__dict__
        attempt = f" (retry {extra.get('retry_count', '?')}/{extra.get('max_retry', '?')})"
        record.msg = describe_connection_error(url, error) + (
            f"; retrying in {retry.group(1)}s{attempt}" if retry else ""
        )
        record.args = None
        record.url = url
        if isinstance(error, BaseException):
            record.error = f"{type(error).__name__}: {error}"
        return True


def describe_connection_error(url: str, error: object) -> str:
    """One line saying what is wrong with the worker's LiveKit connection and what to set."""
    if isinstance(error, aiohttp.WSServerHandshakeError) and error.status in (401, 403):
        return (
            f"the LiveKit server at {url} rejected the worker's credentials "
            f"(HTTP {error.status}): set LIVEKIT_API_KEY and LIVEKIT_API_SECRET to its keys"
        )
    if isinstance(error, aiohttp.WSServerHandshakeError):
        return (
            f"{url} answered HTTP {error.status} instead of a LiveKit agent connection: "
            "check that LIVEKIT_URL points at the LiveKit server"
        )
    if error is None:  # livekit gives up at once, without the reason, when no retry is left
        return (
            f"could not connect to the LiveKit server at {url}: check that it runs there "
            "(LIVEKIT_URL) and that LIVEKIT_API_KEY and LIVEKIT_API_SECRET are its keys"
        )
    return (
        f"cannot reach the LiveKit server at {url}: start it "
        "(`docker compose -f docker/docker-compose.yml up livekit`) or set LIVEKIT_URL"
    )


def prewarm(proc: JobProcess, *, settings: Settings) -> None:
    """Runs once per job process before any job: load the bundled VAD (and, when turns end
    by the end-of-turn model, alone or `combined` with the words, that model) so no job
    waits for a model load."""
    proc.userdata[VAD_USERDATA_KEY] = inference.VAD(
        min_silence_duration=turn_timing(settings).vad_silence,
        activation_threshold=settings.vad_activation_threshold,
    )
    if settings.turn_detection == "eot":
        _turn_detector(proc)
    elif settings.turn_detection == "combined":
        from livekit.local_inference import init_eot

        init_eot()


async def entrypoint(
    ctx: JobContext,
    *,
    settings: Settings,
    pipeline_factory: Callable[[Settings, JobProcess], PipelineFactory] | None = None,
) -> None:
    """The room job: one ClaraVoiceAgent for the room, closed with the job."""
    ctx.log_context_fields = {
        **ctx.log_context_fields,
        "job_id": ctx.job.id,
        "room": ctx.job.room.name,
        "worker_id": ctx.worker_id,  # where the room landed
    }
    agent = ClaraVoiceAgent(
        ctx.room,
        settings,
        pipeline=(pipeline_factory or build_pipeline_factory)(settings, ctx.proc),
        backend=build_backend(settings),
        log_context={"job_id": ctx.job.id, "room": ctx.job.room.name, "worker_id": ctx.worker_id},
    )
    agents: dict[str, ClaraVoiceAgent] = ctx.proc.userdata.setdefault(AGENTS_USERDATA_KEY, {})
    agents[ctx.job.id] = agent

    async def close_agent(reason: str) -> None:  # a safety net: end_of_job closes it first
        await _close_agent(ctx)

    ctx.add_shutdown_callback(close_agent)
    try:
        await ctx.connect()
    except Exception as exc:
        log.critical(
            CONNECT_FAILED_MESSAGE,
            extra={"job_id": ctx.job.id, "room": ctx.job.room.name, "error": str(exc)},
        )
        ctx.shutdown(reason="room connection failed")
        return
    presences = ctx.proc.userdata.setdefault(PRESENCE_USERDATA_KEY, {})
    presences[ctx.job.id] = join_fleet(ctx, settings)  # it beats while the agent starts
    await agent.start()
    await remember_conversation(ctx, agent.conversation.conversation_id)


async def end_of_job(ctx: JobContext) -> None:
    """The job is shutting down: close its agent while the room is still connected.

    livekit runs this before it disconnects the room (its shutdown callbacks run after), so
    every session is cleaned up with the room still there: each client gets its final
    ``ending`` event, and every summary is persisted before the process exits.
    """
    await _close_agent(ctx)


async def _close_agent(ctx: JobContext) -> None:
    presence = ctx.proc.userdata.get(PRESENCE_USERDATA_KEY, {}).pop(ctx.job.id, None)
    if presence is not None:  # before the agent: it beats as the agent's participant
        await within(presence.aclose(), CANCEL_GRACE, what="the agent's presence", log=log)
    agent = ctx.proc.userdata.get(AGENTS_USERDATA_KEY, {}).pop(ctx.job.id, None)
    if agent is not None:  # a hard bound, below livekit's own on end_of_job
        await within(agent.aclose(), backstop(agent.settings), what="closing the agent", log=log)


def build_pipeline_factory(settings: Settings, proc: JobProcess) -> PipelineFactory:
    """The pipeline factory of one room job: the process's VAD and end-of-turn model."""
    return LiveKitPipelineFactory(
        settings,
        vad=proc.userdata[VAD_USERDATA_KEY],
        turn_detector=partial(_turn_detector, proc),
    )


def _turn_detector(proc: JobProcess) -> Any:
    if (detector := proc.userdata.get(EOT_USERDATA_KEY)) is None:
        detector = proc.userdata[EOT_USERDATA_KEY] = inference.TurnDetector(version="v1-mini")
    return detector
