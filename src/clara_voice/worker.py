"""The worker: livekit's AgentServer with clara_voice's prewarm, entrypoint and diagnostics.

``python -m clara_voice start`` runs livekit's CLI over a :class:`ClaraWorker`. The worker
process registers with the LiveKit server; every room job runs in a job process, where
:func:`prewarm` has already loaded the VAD once and :func:`entrypoint` builds exactly one
ClaraVoiceAgent for the room and registers its ``aclose`` with the job's shutdown.

The worker also says clearly when it cannot reach LiveKit: livekit retries the connection
with backoff and logs a terse warning; :class:`_ConnectionWatch` turns each one into one
line naming the URL and the variable to set. The health endpoint answers 503 until the
worker is registered, and again whenever its connection to LiveKit is lost.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import partial
from typing import Any

import aiohttp
from livekit.agents import AgentServer, JobContext, JobProcess, inference
from livekit.agents.cli import AgentsConsole

from .agent import CONNECT_FAILED_MESSAGE, ClaraVoiceAgent
from .config import Settings
from .logging import RenderFormat, configure_logging, get_logger
from .persistence import Backend
from .persistence.http import HttpBackend
from .persistence.sqlite import DB_FILENAME, SQLiteBackend
from .pipeline import LiveKitPipelineFactory, PipelineFactory

log = get_logger("clara_voice.worker")

VAD_USERDATA_KEY = "vad"
EOT_USERDATA_KEY = "eot"


class ClaraWorker(AgentServer):
    """An AgentServer configured from :class:`Settings` and serving clara_voice jobs."""

    def __init__(self, settings: Settings) -> None:
        extra: dict[str, Any] = {}
        if settings.num_idle_processes is not None:
            extra["num_idle_processes"] = settings.num_idle_processes
        super().__init__(
            ws_url=settings.livekit_url,
            api_key=settings.livekit_api_key,
            api_secret=settings.livekit_api_secret.get_secret_value(),
            host=settings.http_host,
            port=settings.http_port,
            max_retry=settings.livekit_max_retry,
            drain_timeout=settings.drain_timeout,
            setup_fnc=partial(prewarm, settings=settings),
            **extra,
        )
        self.settings = settings
        self.gave_up = False
        self.registered = False
        self.last_connection_error: object = None
        self.rtc_session(partial(entrypoint, settings=settings))
        self.on("worker_registered", self._on_registered)

    async def run(self, *, devmode: bool = False, unregistered: bool = False) -> None:
        if not AgentsConsole.get_instance().enabled:  # console mode keeps livekit's TUI
            configure_logging(level=self.settings.log_level, fmt=self._log_format(devmode))
        if not unregistered:
            self._set_health(ok=False)  # 503 until registered with the LiveKit server
        watch = _ConnectionWatch(self)
        livekit_logger = logging.getLogger("livekit.agents")
        livekit_logger.addFilter(watch)
        try:
            await super().run(devmode=devmode, unregistered=unregistered)
        except RuntimeError as exc:
            if "failed to connect to livekit" not in str(exc):
                raise
            self.gave_up = True
            attempts = self.settings.livekit_max_retry + 1
            log.critical(
                f"giving up after {attempts} attempts: "
                + describe_connection_error(self.settings.livekit_url, self.last_connection_error)
                + " (or raise CLARA_LIVEKIT_MAX_RETRY)",
                extra={"url": self.settings.livekit_url},
            )
        finally:
            livekit_logger.removeFilter(watch)

    @property
    def healthy(self) -> bool:
        """What the health endpoint reports: False (503) until registered with LiveKit."""
        return not self._connection_failed

    def _set_health(self, *, ok: bool) -> None:
        # livekit's health endpoint answers 503 while this flag is set; livekit itself sets
        # it only when it gives up, we hold it from the start until registration
        self._connection_failed = not ok

    def _on_connection_failed(self, error: object) -> None:
        self.registered = False
        self.last_connection_error = error
        self._set_health(ok=False)

    def _on_registered(self, worker_id: str, *_: Any) -> None:
        if self.last_connection_error is not None:
            log.info("connected to the LiveKit server", extra={"url": self.settings.livekit_url})
        self.registered = True
        self.last_connection_error = None
        self._set_health(ok=True)

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
        message = record.msg if isinstance(record.msg, str) else ""
        if message == "Error in _connection_task" and _gave_up(record):
            return False  # the traceback of livekit giving up: ClaraWorker.run says it in a line
        if not message.startswith("failed to connect to livekit"):
            return True
        url = self._worker.settings.livekit_url
        error = getattr(record, "error", None)
        self._worker._on_connection_failed(error)
        retry = self._RETRY.search(message)
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


def _gave_up(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return isinstance(exc, RuntimeError) and "failed to connect to livekit" in str(exc)


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
    return (
        f"cannot reach the LiveKit server at {url}: start it "
        "(`docker compose -f docker/docker-compose.yml up livekit`) or set LIVEKIT_URL"
    )


def prewarm(proc: JobProcess, *, settings: Settings) -> None:
    """Runs once per job process before any job: load the bundled VAD (and, when turns end
    by the end-of-turn model, that model) so no job waits for a model load."""
    proc.userdata[VAD_USERDATA_KEY] = inference.VAD(
        min_silence_duration=settings.vad_min_silence_duration,
        activation_threshold=settings.vad_activation_threshold,
    )
    if settings.turn_detection == "eot":
        _turn_detector(proc)


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
    }
    agent = ClaraVoiceAgent(
        ctx.room,
        settings,
        pipeline=(pipeline_factory or build_pipeline_factory)(settings, ctx.proc),
        backend=build_backend(settings),
        log_context={"job_id": ctx.job.id, "room": ctx.job.room.name},
    )
    ctx.add_shutdown_callback(agent.aclose)
    try:
        await ctx.connect()
    except Exception as exc:
        log.critical(
            CONNECT_FAILED_MESSAGE,
            extra={"job_id": ctx.job.id, "room": ctx.job.room.name, "error": str(exc)},
        )
        ctx.shutdown(reason="room connection failed")
        return
    await agent.start()


def build_backend(settings: Settings) -> Backend:
    """The conversation store: the embedded SQLite file or a team's backend over HTTP."""
    if settings.backend == "http":
        assert settings.backend_url is not None  # Settings refuses http without a URL
        return HttpBackend(
            settings.backend_url, token=settings.backend_token, timeout=settings.backend_timeout
        )
    return SQLiteBackend(settings.data_dir / DB_FILENAME)


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
