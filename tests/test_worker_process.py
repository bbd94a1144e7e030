"""The real worker process: ``python -m clara_voice start`` against a loopback LiveKit peer.

Each test starts the service exactly as an operator would (its own process group, a
scratch working directory so no ``.env`` is read, JSON logs on stdout) and watches what an
operator or LiveKit would see: the log lines, the health endpoint, the protocol messages
the worker sends, and its exit code. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from livekit import api
from livekit.protocol import agent

from clara_voice.agent import CONNECT_FAILED_MESSAGE

from .loopback_livekit import TERMINAL_JOB_STATUSES, LoopbackLiveKit
from .metrics_writer_proc import metrics_writers

API_KEY = "clara-test-key"
API_SECRET = "clara-test-secret-0123456789abcdefghijklmnop"  # ≥ 32 characters
WRONG_SECRET = "not-the-servers-secret-0123456789abcdefghij"

STARTUP_TIMEOUT = 45.0  # interpreter start, imports, the first warm job process
STEP_TIMEOUT = 20.0
DRAIN_BOUND = 15.0  # seconds from SIGTERM to exit

SRC = Path(__file__).resolve().parents[1] / "src"
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")

LogLine = dict[str, Any]
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 with nothing listening on it (as of now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def worker_env(*, url: str, api_secret: str, http_port: int, **extra: str) -> dict[str, str]:
    """The worker's environment: only what these tests set, no inherited LIVEKIT_/CLARA_."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LIVEKIT_", "CLARA_")) and name.lower() not in _PROXY_VARIABLES
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(
        LIVEKIT_URL=url,
        LIVEKIT_API_KEY=API_KEY,
        LIVEKIT_API_SECRET=api_secret,
        CLARA_HTTP_HOST="127.0.0.1",
        # the providers are never reached: these jobs never get a room connection
        OPENAI_API_KEY="test-openai-key",
        DEEPGRAM_API_KEY="test-deepgram-key",
        CLARA_HTTP_PORT=str(http_port),
        CLARA_PROMETHEUS_PORT=str(free_port()),
        CLARA_NUM_IDLE_PROCESSES="1",
        CLARA_LOG_FORMAT="json",
        CLARA_DRAIN_TIMEOUT="5",
    )
    env.update(extra)
    return env


def live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are still running (zombies are not)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..." — comm may contain spaces and parentheses
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


async def wait_exited(pids: list[int]) -> None:
    """Wait until the processes ``pids`` (not necessarily our children) have exited."""
    loop = asyncio.get_running_loop()
    waits: list[tuple[int, asyncio.Future[None]]] = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)  # readable once the process has exited
        except ProcessLookupError:
            continue
        exited: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _set_done, exited)
        waits.append((fd, exited))
    try:
        await asyncio.gather(*(exited for _, exited in waits))
    finally:
        for fd, _ in waits:
            loop.remove_reader(fd)
            os.close(fd)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class WorkerProcess:
    """A running ``python -m clara_voice start``: its JSON log lines, health and exit."""

    def __init__(
        self, proc: asyncio.subprocess.Process, *, http_port: int, metrics_port: int
    ) -> None:
        self.proc = proc
        self.http_port = http_port
        self.metrics_port = metrics_port
        self.lines: list[LogLine] = []
        self.unparsed: list[str] = []  # stdout lines that are not one JSON object
        self.stderr: list[str] = []
        self._stdout_closed = False
        self._changed = asyncio.Condition()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read_stdout(proc.stdout)),
            asyncio.create_task(self._read_stderr(proc.stderr)),
        ]

    @property
    def pgid(self) -> int:
        return self.proc.pid  # started with start_new_session=True

    # -- logs -------------------------------------------------------------------------

    async def _read_stdout(self, stream: asyncio.StreamReader) -> None:
        try:
            async for raw in stream:
                text = raw.decode(errors="replace").rstrip("\n")
                try:
                    line = json.loads(text)
                except ValueError:
                    line = None
                if isinstance(line, dict):
                    self.lines.append(line)
                else:
                    self.unparsed.append(text)
                async with self._changed:
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self._stdout_closed = True
                self._changed.notify_all()

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            self.stderr.append(raw.decode(errors="replace").rstrip("\n"))

    def find(self, predicate: Callable[[LogLine], bool], since: int = 0) -> list[LogLine]:
        return [line for line in self.lines[since:] if predicate(line)]

    async def wait_line(
        self,
        predicate: Callable[[LogLine], bool],
        what: str,
        *,
        timeout: float = STEP_TIMEOUT,
        since: int = 0,
    ) -> LogLine:
        """The first log line (from index ``since``) matching ``predicate``.

        Fails after ``timeout`` seconds, or as soon as the worker's stdout closes without
        such a line, showing the last lines the worker wrote.
        """

        def seen() -> bool:
            return bool(self.find(predicate, since)) or self._stdout_closed

        with contextlib.suppress(TimeoutError):
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(seen), timeout)
        found = self.find(predicate, since)
        if not found:
            raise AssertionError(
                f"the worker logged no line {what} within {timeout}s\n{self.tail()}"
            )
        return found[0]

    def tail(self, count: int = 25) -> str:
        shown = [json.dumps(line)[:400] for line in self.lines[-count:]]
        stdout = ["--- stdout (last lines):", *shown, "--- unparsed:", *self.unparsed[-5:]]
        return "\n".join([*stdout, "--- stderr:", *self.stderr[-count:]])

    def all_output(self) -> str:
        return "\n".join([*map(json.dumps, self.lines), *self.unparsed, *self.stderr])

    # -- health -----------------------------------------------------------------------

    async def health(self) -> tuple[int, str]:
        """``GET /`` of the worker's health endpoint: (status, body)."""
        async with self._http.get(f"http://127.0.0.1:{self.http_port}/") as response:
            return response.status, await response.text()

    async def metrics(self) -> tuple[int, str]:
        """``GET /metrics`` of the worker's Prometheus endpoint: (status, body)."""
        async with self._http.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as response:
            return response.status, await response.text()

    # -- exit -------------------------------------------------------------------------

    async def alongside(self, awaitable: Awaitable[T], what: str) -> T:
        """``awaitable``'s result, failing at once (with the logs) if the worker exits first.

        ``awaitable`` brings its own timeout; a :class:`TimeoutError` from it fails the test
        with the worker's last log lines.
        """
        waiting = asyncio.ensure_future(awaitable)
        exited = asyncio.ensure_future(self.proc.wait())
        try:
            await asyncio.wait({waiting, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiting, exited):
                if not task.done():
                    task.cancel()
            await asyncio.gather(waiting, exited, return_exceptions=True)
        if waiting.cancelled():
            raise AssertionError(
                f"the worker exited ({self.proc.returncode}) before {what}\n{self.tail()}"
            )
        if isinstance(waiting.exception(), TimeoutError):
            raise AssertionError(f"timed out waiting for {what}\n{self.tail()}")
        return waiting.result()

    async def wait_exit(self, timeout: float) -> int:
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"the worker did not exit within {timeout}s\n{self.tail()}"
            ) from None

    async def terminate(self, timeout: float = DRAIN_BOUND) -> tuple[int, float]:
        """SIGTERM, as an orchestrator stops the service: (exit code, seconds to exit)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = await self.wait_exit(timeout)
        return code, time.monotonic() - started

    async def wait_group_gone(self, timeout: float = 5.0) -> list[int]:
        """Wait until every process of the worker's group has exited; the survivors."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wait_exited(live_group_members(self.pgid)), timeout)
        return live_group_members(self.pgid)

    async def finish(self) -> None:
        """Kill whatever is left of the worker's process group and stop reading it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)
        if self.proc.returncode is None:
            await self.proc.wait()
        _, pending = await asyncio.wait(self._readers, timeout=5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        await self._http.close()


@asynccontextmanager
async def running_worker(env: dict[str, str], cwd: Path) -> AsyncIterator[WorkerProcess]:
    """``python -m clara_voice start`` in its own process group, killed on the way out."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clara_voice",
        "start",
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        limit=1 << 20,
    )
    worker = WorkerProcess(
        proc,
        http_port=int(env["CLARA_HTTP_PORT"]),
        metrics_port=int(env["CLARA_PROMETHEUS_PORT"]),
    )
    try:
        yield worker
    finally:
        await worker.finish()


def exists(path: str | Path) -> bool:
    return os.path.lexists(path)


def is_event(text: str, level: str | None = None) -> Callable[[LogLine], bool]:
    return lambda line: line.get("event") == text and (level is None or line["level"] == level)


def assert_clean_output(worker: WorkerProcess, *secrets: str | None) -> None:
    """One JSON object per stdout line, no traceback anywhere, no secret in the output."""
    assert worker.unparsed == [], f"stdout lines that are not JSON: {worker.unparsed[:5]}"
    assert not [line for line in worker.lines if "exception" in line], worker.tail()
    assert not worker.find(is_event("Error in _connection_task")), worker.tail()
    assert not [line for line in worker.lines if "message" in line], "duplicated event text"
    assert "Traceback" not in "\n".join(worker.stderr), worker.tail()
    output = worker.all_output()
    for secret in filter(None, secrets):
        assert secret not in output, "a secret was written to the worker's output"


async def test_room_connection_failure_is_one_critical_line_and_the_worker_keeps_serving(
    tmp_path: Path,
) -> None:
    async with LoopbackLiveKit(api_key=API_KEY, api_secret=API_SECRET) as peer:
        env = worker_env(url=peer.url, api_secret=API_SECRET, http_port=free_port())
        async with running_worker(env, tmp_path) as worker:
            connection = await worker.alongside(
                peer.wait_registered(timeout=STARTUP_TIMEOUT), "registering with the peer"
            )
            assert connection.register is not None
            assert connection.register.type == agent.JobType.JT_ROOM
            await worker.wait_line(is_event("registered worker"), "saying it registered")
            assert await worker.health() == (200, "OK")  # before any job

            # first job: hold the room signalling so the job is seen while it connects
            peer.rtc_gate.clear()
            job = await worker.alongside(
                peer.offer_job("clara-room-1", timeout=STEP_TIMEOUT), "answering a job offer"
            )
            assert job.assigned, f"the worker declined the job: {job.answer}"
            assert job.answer.participant_identity
            await worker.alongside(
                peer.wait_for(lambda: peer.rtc_refusals, timeout=STEP_TIMEOUT),
                "the job connecting to its room",
            )
            await worker.alongside(
                peer.wait_job_status(job.id, [agent.JobStatus.JS_RUNNING], STEP_TIMEOUT),
                "the job reported as running",
            )
            assert await worker.health() == (200, "OK")  # during the job
            # one Prometheus endpoint: livekit's worker metrics and the job processes' own
            status, exposition = await worker.metrics()
            assert status == 200, exposition
            assert "\nlk_agents_active_job_count{" in exposition
            assert "\nclara_agent_unhealthy 0.0\n" in exposition
            assert '\nclara_errors_total{source="provider"}' in exposition
            # the job process joins with the token of the assignment, at the assigned URL
            claims = api.TokenVerifier(API_KEY, API_SECRET).verify(peer.rtc_refusals[0].token or "")
            assert claims.identity == job.answer.participant_identity
            assert claims.video is not None
            assert claims.video.room == job.room
            peer.rtc_gate.set()

            failed = await worker.wait_line(
                is_event(CONNECT_FAILED_MESSAGE, "critical"), "saying the room connection failed"
            )
            assert failed["job_id"] == job.id
            assert failed["room"] == job.room
            ended = await worker.alongside(
                peer.wait_job_ended(job.id, timeout=STEP_TIMEOUT), "the job reported as ended"
            )
            assert ended.status in TERMINAL_JOB_STATUSES
            assert await worker.health() == (200, "OK")  # after the job

            # still registered on the same connection, and it takes the next job
            assert peer.current_connection() is connection
            second = await worker.alongside(
                peer.offer_job("clara-room-2", timeout=STEP_TIMEOUT), "answering a second offer"
            )
            assert second.assigned, f"the worker declined a second job: {second.answer}"
            failed_again = await worker.wait_line(
                lambda line: (
                    is_event(CONNECT_FAILED_MESSAGE, "critical")(line)
                    and line.get("job_id") == second.id
                ),
                "saying the second room connection failed",
            )
            assert failed_again["room"] == second.room
            await worker.alongside(
                peer.wait_job_ended(second.id, timeout=STEP_TIMEOUT),
                "the second job reported as ended",
            )
            assert await worker.health() == (200, "OK")
            assert len(peer.connections) == 1  # never had to reconnect
            assert peer.auth_rejections == []

            # one critical line per failed job, none for anything else
            criticals = worker.find(lambda line: line["level"] == "critical")
            assert [line["job_id"] for line in criticals] == [job.id, second.id]

            code, took = await worker.terminate()
            assert code == 0, worker.tail()
            assert took < DRAIN_BOUND
            assert await worker.wait_group_gone() == [], "job processes outlived the worker"
            assert_clean_output(worker, API_SECRET, job.token, second.token)
            folder = worker.find(is_event("metrics folder ready"))[0]["path"]
            assert not exists(folder), "the worker left its metrics folder behind"


async def test_an_unhealthy_agent_turns_the_health_endpoint_503_until_its_process_ends(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "prometheus"  # an operator's PROMETHEUS_MULTIPROC_DIR
    async with LoopbackLiveKit(api_key=API_KEY, api_secret=API_SECRET) as peer:
        env = worker_env(
            url=peer.url,
            api_secret=API_SECRET,
            http_port=free_port(),
            PROMETHEUS_MULTIPROC_DIR=str(folder),
        )
        async with running_worker(env, tmp_path) as worker:
            await worker.alongside(
                peer.wait_registered(timeout=STARTUP_TIMEOUT), "registering with the peer"
            )
            await worker.wait_line(is_event("registered worker"), "saying it registered")
            assert await worker.health() == (200, "OK")

            # a process writing into the worker's folder, as a job process whose agent
            # failed its health check does; it then ends without taking it back (a crash)
            async with metrics_writers(folder, {"unhealthy": True}) as (job_process,):
                turned = await worker.wait_line(
                    is_event("worker unhealthy: agents fail their health check", "warning"),
                    "turning unhealthy",
                )
                assert turned["unhealthy_agents"] == 1
                status, _ = await worker.health()
                assert status == 503
                _, exposition = await worker.metrics()
                assert "\nclara_agent_unhealthy 1.0\n" in exposition
                since = len(worker.lines)
                await job_process.stop()

            await worker.wait_line(
                is_event("agents pass their health check again", "info"),
                "turning healthy after the process ended",
                since=since,
            )
            assert await worker.health() == (200, "OK")
            code, _ = await worker.terminate()
            assert code == 0, worker.tail()
            assert exists(folder)  # an operator's folder stays
            assert_clean_output(worker, API_SECRET)


async def test_unreachable_livekit_url_says_so_in_one_line_and_gives_up(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    env = worker_env(
        url=url, api_secret=API_SECRET, http_port=free_port(), CLARA_LIVEKIT_MAX_RETRY="1"
    )
    async with running_worker(env, tmp_path) as worker:
        warning = await worker.wait_line(
            lambda line: line["level"] == "warning" and url in line["event"],
            f"warning that {url} cannot be reached",
            timeout=STARTUP_TIMEOUT,
        )
        assert "cannot reach the LiveKit server" in warning["event"]
        assert "set LIVEKIT_URL" in warning["event"]
        assert "\n" not in warning["event"]

        gave_up = await worker.wait_line(
            lambda line: line["level"] == "critical" and line["event"].startswith("giving up"),
            "giving up",
        )
        assert url in gave_up["event"]
        assert await worker.wait_exit(DRAIN_BOUND) == 1
        assert_clean_output(worker, API_SECRET)


async def test_health_answers_503_while_the_livekit_url_is_unreachable(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    # livekit waits min(2 * retry, 10) s before retry number ``retry + 1``: with one retry
    # (the other test) it waits 0 s, so there is no time to ask; with two the second
    # retry waits 2 s, and the health is asked then
    env = worker_env(
        url=url, api_secret=API_SECRET, http_port=free_port(), CLARA_LIVEKIT_MAX_RETRY="2"
    )
    async with running_worker(env, tmp_path) as worker:
        await worker.wait_line(
            lambda line: line["level"] == "warning" and url in line["event"],
            "warning about the first failed attempt",
            timeout=STARTUP_TIMEOUT,
        )
        retrying = await worker.wait_line(
            lambda line: line["level"] == "warning" and "retrying in 2s" in line["event"],
            "announcing a retry in 2s",
        )
        assert "set LIVEKIT_URL" in retrying["event"]
        for _ in range(3):
            status, body = await worker.health()
            assert status == 503, body
        await worker.wait_line(
            lambda line: line["level"] == "critical" and line["event"].startswith("giving up"),
            "giving up",
        )
        assert await worker.wait_exit(DRAIN_BOUND) == 1
        assert_clean_output(worker, API_SECRET)


async def test_rejected_credentials_name_the_key_variables(tmp_path: Path) -> None:
    async with LoopbackLiveKit(api_key=API_KEY, api_secret=API_SECRET) as peer:
        env = worker_env(
            url=peer.url,
            api_secret=WRONG_SECRET,
            http_port=free_port(),
            CLARA_LIVEKIT_MAX_RETRY="2",
        )
        async with running_worker(env, tmp_path) as worker:
            warning = await worker.wait_line(
                lambda line: line["level"] == "warning" and peer.url in line["event"],
                "warning that the credentials were rejected",
                timeout=STARTUP_TIMEOUT,
            )
            assert "rejected the worker's credentials" in warning["event"]
            assert "LIVEKIT_API_KEY" in warning["event"]
            assert "LIVEKIT_API_SECRET" in warning["event"]
            assert peer.auth_rejections, "the peer saw no rejected connection"
            assert {rejection.status for rejection in peer.auth_rejections} == {401}

            await worker.wait_line(
                lambda line: line["level"] == "warning" and "retrying in 2s" in line["event"],
                "announcing a retry in 2s",
            )
            status, body = await worker.health()
            assert status == 503, body

            gave_up = await worker.wait_line(
                lambda line: line["level"] == "critical" and line["event"].startswith("giving up"),
                "giving up",
            )
            assert "LIVEKIT_API_KEY" in gave_up["event"]  # the advice names the real problem
            assert len(peer.auth_rejections) == 3  # CLARA_LIVEKIT_MAX_RETRY=2 → 3 attempts
            assert "after 3 attempts" in gave_up["event"]
            assert await worker.wait_exit(DRAIN_BOUND) == 1
            assert not peer.registered.is_set()
            assert peer.received == []
            assert_clean_output(worker, API_SECRET, WRONG_SECRET)
