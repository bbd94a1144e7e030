"""Child processes that a command starts, watches and stops: the LiveKit server, the worker
and the page of ``python -m clara_voice demo``.

Each child runs in a session (so a process group) of its own: the terminal's Ctrl-C reaches
only the supervisor, which stops the children in its own order. A child's output goes to
its log file. It is ready when its HTTP address answers 200, polled within a bound (a child
process offers no readiness event); exiting first, or not answering in time, is a
:class:`ChildFailedError` saying so in one line. Stopping a child sends it SIGTERM, waits
its bound, then SIGKILLs its whole group; whatever it left in its group (the worker's job
processes) is ended as well, so nothing outlives the supervisor's ``aclose``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from livekit.agents.utils import aio

from clara_voice.logging import get_logger

log = get_logger("clara_voice.supervisor")

POLL_INTERVAL = 0.2
"""Seconds between two looks at a child's readiness address, or at its group."""
LEFTOVER_TIMEOUT = 3.0
"""Seconds the processes a child left in its group get between SIGTERM and SIGKILL."""


@dataclass(frozen=True, kw_only=True)
class ChildSpec:
    """How to run one child, know it is ready, and stop it."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    log_path: Path
    ready_url: str
    ready_timeout: float
    stop_timeout: float
    force_after: float | None = None
    """Seconds after SIGTERM to send a second one, for a child that takes the second as
    "now" (livekit-server waits for its participants to leave after the first)."""


class ChildFailedError(Exception):
    """A child could not start, exited, or was not ready in time (one line)."""

    def __init__(self, child: Child | None, message: str) -> None:
        super().__init__(message)
        self.child = child


class Child:
    """A running child process: its spec and its process (the leader of its group)."""

    def __init__(self, *, spec: ChildSpec, proc: asyncio.subprocess.Process) -> None:
        self.spec = spec
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 12) -> list[str]:
        """The last lines the child wrote."""
        try:
            text = self.spec.log_path.read_text(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]


class Supervisor:
    """The children of one command, started in order and stopped in the reverse order."""

    def __init__(self, *, cwd: Path) -> None:
        self._cwd = cwd
        self._children: list[Child] = []
        self._closed = False

    @property
    def children(self) -> list[Child]:
        return list(self._children)

    async def start(self, spec: ChildSpec) -> Child:
        """Start ``spec``'s process, its output to its log file (written anew);
        :class:`ChildFailedError` when it cannot be started."""
        try:
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            with spec.log_path.open("wb") as output:
                proc = await asyncio.create_subprocess_exec(
                    *spec.argv,
                    cwd=self._cwd,
                    env=dict(spec.env),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as exc:
            raise ChildFailedError(None, f"cannot start {spec.name}: {exc}") from None
        child = Child(spec=spec, proc=proc)
        self._children.append(child)
        log.debug("child started", extra={"child": spec.name, "pid": proc.pid})
        return child

    async def wait_ready(self, child: Child) -> None:
        """Return once ``child`` answers 200 at its address; :class:`ChildFailedError` when
        it exits first or does not answer within its bound."""
        spec = child.spec
        loop = asyncio.get_running_loop()
        deadline = loop.time() + spec.ready_timeout
        timeout = aiohttp.ClientTimeout(total=2)
        exited = asyncio.create_task(child.proc.wait(), name=f"clara.supervisor.{spec.name}")
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                while True:
                    if await _answers(http, spec.ready_url):
                        return
                    left = deadline - loop.time()
                    if left <= 0:
                        raise ChildFailedError(
                            child, f"{spec.name} was not ready within {spec.ready_timeout:.0f} s"
                        )
                    await asyncio.wait({exited}, timeout=min(POLL_INTERVAL, left))
                    if exited.done():
                        raise ChildFailedError(
                            child,
                            f"{spec.name} exited with code {exited.result()} before it was ready",
                        )
        finally:
            await aio.cancel_and_wait(exited)

    async def first_exit(self) -> Child:
        """Wait until one of the children exits; that child."""
        waits = {
            asyncio.create_task(
                child.proc.wait(), name=f"clara.supervisor.{child.spec.name}"
            ): child
            for child in self._children
        }
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await aio.cancel_and_wait(*waits)
        return waits[next(iter(done))]

    def kill_now(self) -> None:
        """SIGKILL every child's group at once (a second Ctrl-C)."""
        for child in self._children:
            _signal_group(child.pid, signal.SIGKILL)

    async def aclose(self) -> None:
        """Stop every child, the last started first, each within its bound; safe twice."""
        if self._closed:
            return
        self._closed = True
        for child in reversed(self._children):
            await _stop(child)

    def pids(self) -> list[int]:
        """The children's process ids (each the id of its group)."""
        return [child.pid for child in self._children]


async def _answers(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as response:
            return response.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


async def _stop(child: Child) -> None:
    """SIGTERM (a second one after ``force_after``), ``stop_timeout``, then SIGKILL to the
    group; then whatever is left in the group."""
    spec = child.spec
    if child.proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signal.SIGTERM)
        left = spec.stop_timeout
        if spec.force_after is not None and spec.force_after < left:
            if not await _exits_within(child, spec.force_after):
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
            left -= spec.force_after
        if not await _exits_within(child, left):
            log.warning(
                "child did not stop in time, killing it",
                extra={"child": spec.name, "timeout": spec.stop_timeout},
            )
            _signal_group(child.pid, signal.SIGKILL)
            await child.proc.wait()
    await _end_leftovers(child.pid)


async def _exits_within(child: Child, seconds: float) -> bool:
    """Whether ``child`` exits within ``seconds``."""
    try:
        await asyncio.wait_for(child.proc.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def _end_leftovers(pgid: int) -> None:
    """End what is left in the group ``pgid``: SIGTERM, a short bound, SIGKILL."""
    if not _signal_group(pgid, signal.SIGTERM):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LEFTOVER_TIMEOUT
    while loop.time() < deadline:
        await asyncio.sleep(POLL_INTERVAL)  # a group offers no event for its end
        if not _signal_group(pgid, 0):
            return
    _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the group ``pgid``; whether it still had a process."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of the group that is not ours any more
        return True
    return True


__all__ = [
    "LEFTOVER_TIMEOUT",
    "POLL_INTERVAL",
    "Child",
    "ChildFailedError",
    "ChildSpec",
    "Supervisor",
]
