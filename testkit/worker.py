"""The real worker as a subprocess: ``python -m clara_voice start`` with its JSON log lines,
health and metrics endpoints, exit code and process group (shared by the worker-process
tests against the loopback LiveKit peer and the end-to-end tests against a real server).

Tests wait on what the worker logged with :meth:`WorkerProcess.wait_line` (a condition
with a timeout), never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from testkit.server_process import free_port as free_port

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


def worker_env(
    *, url: str, api_secret: str, http_port: int, api_key: str = API_KEY, **extra: str
) -> dict[str, str]:
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
        LIVEKIT_API_KEY=api_key,
        LIVEKIT_API_SECRET=api_secret,
        CLARA_HTTP_HOST="127.0.0.1",
        # placeholders; tests that reach providers point them at loopback peers
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

    async def crash(self) -> None:
        """SIGKILL the worker and its job processes at once, as a machine or a pod dies."""
        os.killpg(self.pgid, signal.SIGKILL)
        await self.wait_exit(DRAIN_BOUND)

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
async def running_worker(
    env: dict[str, str], cwd: Path, command: Sequence[str] | None = None
) -> AsyncIterator[WorkerProcess]:
    """``command`` (``python -m clara_voice start`` by default) in its own process group,
    killed on the way out; all it wrote is left in ``cwd / "worker.log"``."""
    proc = await asyncio.create_subprocess_exec(
        *(command or (sys.executable, "-m", "clara_voice", "start")),
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
        (cwd / "worker.log").write_text(worker.all_output())


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


def start_clara(cwd: Path, **env: str | None) -> subprocess.CompletedProcess[str]:
    """``python -m clara_voice start`` with only ``env`` set among our and the providers'
    variables (``None`` removes one); for runs that stop at start."""
    return run_clara(cwd, ["start"], **env)


def run_clara(
    cwd: Path, args: Sequence[str], *, timeout: float = 60, **env: str | None
) -> subprocess.CompletedProcess[str]:
    """``python -m clara_voice <args>`` to its end, with only ``env`` set among our and the
    providers' variables (``None`` removes one)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLARA_", "LIVEKIT_", "OPENAI_", "DEEPGRAM_"))
    }
    clean |= {k: v for k, v in env.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "clara_voice", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
