"""``python -m clara_voice demo`` (``make demo``): Clara on this machine, without Docker.

It runs three children (:mod:`clara_voice._supervisor`), in this order, each only once the
one before is ready:

1. the LiveKit server the project builds (``scripts/livekit-server``, or
   ``LIVEKIT_SERVER_BIN``), in development mode, with the configuration of
   :mod:`clara_voice._livekit_server`: everything on 127.0.0.1, signalling on
   ``LIVEKIT_URL``'s port, media on UDP ``CLARA_DEMO_RTC_PORT``, the keys of
   ``LIVEKIT_API_KEY``/``LIVEKIT_API_SECRET``; ready when ``GET /`` answers 200;
2. the worker, as ``python -m clara_voice dev``: livekit's development mode, whose load
   threshold is infinite, so a busy machine does not make it refuse the demo's job (with
   ``start`` it would, from 70 % CPU); livekit 1.8 has no reloader in it any more
   (``--no-reload`` keeps it from saying so). Ready when its health endpoint answers 200,
   which it does once registered with the server;
3. the page (``python -m clara_voice web``); ready when it answers ``GET /``.

Every address is on 127.0.0.1, whatever ``CLARA_HTTP_HOST``, ``CLARA_WEB_HOST`` or
``CLARA_WEB_ALLOW_REMOTE`` say: the children get those settings from the demo. Then it
prints the page's address and what to do, and waits. Ctrl-C (or SIGTERM) stops the
worker, the page and the server, each within a bound (a second Ctrl-C kills them at once),
and exits 0; a child that exits on its own is named, with the last lines of its log, and
the others are stopped (exit 1).

Before it starts anything it checks what would stop it, and says each problem in one line
(exit 2): a missing provider key, with the keyless route (local OpenAI-compatible
servers); a ``LIVEKIT_URL`` that is not on this machine; no server binary; the page not
built; a port in use, naming the setting that moves it. The children's output goes to
``CLARA_DATA_DIR/demo/*.log``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from livekit.agents.utils import aio

from clara_voice import _urls
from clara_voice._livekit_server import ServerBinaryError, find_server_binary, server_config
from clara_voice._supervisor import Child, ChildFailedError, ChildSpec, Supervisor
from clara_voice.config import Settings
from clara_voice.logging import configure_logging
from clara_voice.voice.providers import MissingKey, missing_provider_keys
from clara_voice.web import WebError, check

HOST = "127.0.0.1"
SERVER_READY_TIMEOUT = 30.0
WORKER_READY_TIMEOUT = 120.0
"""Seconds for the worker to import, start and register (a busy machine, a cold disk)."""
PAGE_READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
"""Seconds the server and the page get to stop after SIGTERM (the worker: its jobs' bound
``CLARA_JOB_SHUTDOWN_TIMEOUT`` more)."""
SERVER_DRAIN = 1.0
"""Seconds the server gets to see its participants leave before a second SIGTERM makes it
close their rooms (it would wait for them: the page's stays until the browser leaves)."""
LOG_DIRNAME = "demo"

KEYLESS = {
    "STT": "CLARA_STT_PROVIDER=openai CLARA_STT_BASE_URL=http://localhost:8000/v1 "
    "(e.g. a faster-whisper server)",
    "LLM": "CLARA_LLM_BASE_URL=http://localhost:11434/v1 CLARA_LLM_MODEL=llama3.2 (Ollama)",
    "TTS": "CLARA_TTS_BASE_URL=http://localhost:8880/v1 (e.g. a Kokoro server)",
}
"""The keyless route, by kind: a local OpenAI-compatible server (README: Providers)."""


class DemoError(Exception):
    """What keeps the demo from starting: one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, kw_only=True)
class DemoPlan:
    """The three children of the demo, and what to tell the person running it."""

    server: ChildSpec
    worker: ChildSpec
    page: ChildSpec
    livekit_url: str
    page_url: str
    log_dir: Path


def key_problems(settings: Settings) -> list[str]:
    """One line per missing provider key: what needs it, and the keyless route instead."""
    by_variable: dict[str, list[MissingKey]] = {}
    for missing in missing_provider_keys(settings):
        by_variable.setdefault(missing.variable, []).append(missing)
    lines = []
    for variable, missing_list in by_variable.items():
        users = list(dict.fromkeys(m.user for m in missing_list))
        routes = dict.fromkeys(
            KEYLESS[m.kind]
            if m.user.startswith(("the ", "CLARA_STT_PROVIDER"))
            else f'a "base_url" in {m.user}'
            for m in missing_list
        )
        lines.append(
            f"missing setting {variable}: {' and '.join(users)} "
            f"need{'s' if len(users) == 1 else ''} it. Put it in .env, or go without keys "
            f"through local OpenAI-compatible servers: {' and '.join(routes)}"
        )
    return lines


def plan(settings: Settings, *, cwd: Path) -> DemoPlan:
    """The demo's children for ``settings``; :class:`DemoError` with every problem."""
    problems = key_problems(settings)
    url = urlparse(settings.livekit_url)
    here = _urls.is_loopback(url.hostname or "") and url.scheme in ("ws", "http")
    if not here:
        problems.append(
            f"LIVEKIT_URL={settings.livekit_url} is not a ws:// address on this machine: the "
            "demo runs its own LiveKit server there; unset LIVEKIT_URL (or set it to "
            "ws://localhost:<port>), or run `python -m clara_voice start` against that server"
        )
    signal_port = url.port or 80
    try:
        binary: Path | None = find_server_binary(settings.livekit_server_bin, cwd)
    except ServerBinaryError as exc:
        binary, problems = None, [*problems, str(exc)]
    try:
        check(settings.model_copy(update={"web_host": HOST}))
    except WebError as exc:
        problems.append(str(exc))
    problems += port_problems(
        [
            *([(signal_port, socket.SOCK_STREAM, "LIVEKIT_URL")] if here else []),
            (settings.demo_rtc_port, socket.SOCK_DGRAM, "CLARA_DEMO_RTC_PORT"),
            (settings.http_port, socket.SOCK_STREAM, "CLARA_HTTP_PORT"),
            (settings.web_port, socket.SOCK_STREAM, "CLARA_WEB_PORT"),
            *(
                [(settings.prometheus_port, socket.SOCK_STREAM, "CLARA_PROMETHEUS_PORT")]
                if settings.prometheus_port
                else []
            ),
        ]
    )
    if problems or binary is None:
        raise DemoError(problems)

    livekit_url = f"ws://{HOST}:{signal_port}"
    secret = settings.livekit_api_secret.get_secret_value()
    keys = {"LIVEKIT_API_KEY": settings.livekit_api_key, "LIVEKIT_API_SECRET": secret}
    config = server_config(
        port=signal_port,
        api_key=settings.livekit_api_key,
        api_secret=secret,
        rtc_udp=settings.demo_rtc_port,
    )
    inherited = {k: v for k, v in os.environ.items() if k not in ("LIVEKIT_KEYS",)}
    python = {**inherited, **keys, "LIVEKIT_URL": livekit_url, "PYTHONUNBUFFERED": "1"}
    log_dir = settings.data_dir / LOG_DIRNAME
    page_url = f"http://{HOST}:{settings.web_port}/"
    clara = (sys.executable, "-m", "clara_voice")
    return DemoPlan(
        server=ChildSpec(
            name="the LiveKit server",
            argv=(str(binary),),
            env={**inherited, "LIVEKIT_CONFIG": config},  # not a file, not on the command line
            log_path=log_dir / "livekit-server.log",
            ready_url=f"http://{HOST}:{signal_port}/",
            ready_timeout=SERVER_READY_TIMEOUT,
            stop_timeout=STOP_TIMEOUT,
            force_after=SERVER_DRAIN,  # then it closes its rooms, the page's too
        ),
        worker=ChildSpec(
            name="the worker",
            argv=(*clara, "dev", "--no-reload"),
            env={**python, "CLARA_HTTP_HOST": HOST},
            log_path=log_dir / "worker.log",
            ready_url=f"http://{HOST}:{settings.http_port}/",
            ready_timeout=WORKER_READY_TIMEOUT,
            stop_timeout=STOP_TIMEOUT + settings.job_shutdown_timeout,
        ),
        page=ChildSpec(
            name="the page",
            argv=(*clara, "web"),
            env={
                **python,
                "CLARA_WEB_HOST": HOST,
                "CLARA_WEB_ALLOW_REMOTE": "false",
                "CLARA_WEB_LIVEKIT_URL": livekit_url,
            },
            log_path=log_dir / "web.log",
            ready_url=page_url,
            ready_timeout=PAGE_READY_TIMEOUT,
            stop_timeout=STOP_TIMEOUT,
        ),
        livekit_url=livekit_url,
        page_url=page_url,
        log_dir=log_dir,
    )


def port_problems(ports: list[tuple[int, int, str]]) -> list[str]:
    """One line per port (TCP or UDP, on 127.0.0.1) that cannot be had, naming its setting."""
    problems = []
    seen: dict[tuple[int, int], str] = {}
    for port, kind, setting in ports:
        if port == 0 and setting != "LIVEKIT_URL":
            problems.append(f"{setting}=0: the demo needs a fixed port there")
            continue
        if (earlier := seen.get((port, kind))) is not None:
            problems.append(f"{setting} and {earlier} are both port {port}: set one to another")
            continue
        seen[(port, kind)] = setting
        if not _free(port, kind):
            proto = "TCP" if kind == socket.SOCK_STREAM else "UDP"
            problems.append(
                f"port {port} ({proto}) on {HOST} is in use: set {setting} to a free port"
                + (" (e.g. ws://localhost:7890)" if setting == "LIVEKIT_URL" else "")
            )
    return problems


def _free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:  # as the servers do: a closed port's TIME_WAIT is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def say(line: str = "") -> None:
    print(line, flush=True)


async def run(demo: DemoPlan, *, cwd: Path) -> int:
    """Start the children, wait until Ctrl-C/SIGTERM or one of them exits, stop them all."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    supervisor = Supervisor(cwd=cwd)

    def on_signal() -> None:
        if stopping.is_set():
            say("clara_voice demo: killing them now")
            supervisor.kill_now()
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    code = 0
    try:
        failed = await _until_stopped(demo, supervisor, stopping)
        if failed is not None:
            _report(failed)
            code = 1
    finally:
        say("clara_voice demo: stopping (Ctrl-C again kills at once)")
        await supervisor.aclose()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        say("clara_voice demo: stopped")
    return code


async def _until_stopped(
    demo: DemoPlan, supervisor: Supervisor, stopping: asyncio.Event
) -> ChildFailedError | None:
    """Run the demo until ``stopping``; the failure that ended it early, if one did."""
    say(
        f"clara_voice demo: starting the LiveKit server at {demo.livekit_url} "
        f"(logs in {demo.log_dir}/)"
    )
    steps: list[tuple[ChildSpec, ...]] = [(demo.server,), (demo.worker, demo.page)]
    for specs in steps:
        try:
            children = [await supervisor.start(spec) for spec in specs]
            if not await _unless(stopping, *(supervisor.wait_ready(c) for c in children)):
                return None
        except ChildFailedError as exc:
            return exc
        say(f"clara_voice demo: {' and '.join(_ready(c) for c in children)}")
    say()
    say(f"  Talk to Clara: open {demo.page_url} in a browser, press Start Session,")
    say("  allow the microphone and speak.")
    say()
    say(f"Ctrl-C stops the LiveKit server, the worker and the page. Logs: {demo.log_dir}/")
    exited: list[Child] = []

    async def watch() -> None:
        exited.append(await supervisor.first_exit())

    await _unless(stopping, watch())
    if exited:
        child = exited[0]
        return ChildFailedError(
            child, f"{child.spec.name} exited with code {child.proc.returncode}"
        )
    return None


def _ready(child: Child) -> str:
    name = child.spec.name
    return f"{name} is registered" if name == "the worker" else f"{name} is ready"


async def _unless(stopping: asyncio.Event, *waits: Coroutine[Any, Any, object]) -> bool:
    """Await ``waits`` together unless ``stopping`` is set first; whether they finished.
    The first failure among them is raised (the others are cancelled)."""
    tasks = [asyncio.create_task(wait, name="clara.demo.wait") for wait in waits]
    stop = asyncio.create_task(stopping.wait(), name="clara.demo.stopping")
    try:
        pending = set(tasks)
        while pending:
            done, _ = await asyncio.wait({*pending, stop}, return_when=asyncio.FIRST_COMPLETED)
            if stop in done:
                return False
            for task in done:
                task.result()  # raises the child's failure
            pending -= done
        return True
    finally:
        await aio.cancel_and_wait(stop, *tasks)


def _report(failure: ChildFailedError) -> None:
    child = failure.child
    if child is None:
        print(f"clara_voice: {failure}", file=sys.stderr)
        return
    print(f"clara_voice: {failure}; its last lines ({child.spec.log_path}):", file=sys.stderr)
    for line in child.log_tail():
        print(f"  {line}", file=sys.stderr)


def main(settings: Settings) -> int:
    """The ``demo`` command."""
    configure_logging(level=settings.log_level, fmt="console", stream=sys.stderr)
    cwd = Path.cwd()
    try:
        demo = plan(settings, cwd=cwd)
    except DemoError as exc:
        for problem in exc.problems:
            print(f"clara_voice: {problem}", file=sys.stderr)
        return 2
    return asyncio.run(run(demo, cwd=cwd))


__all__ = [
    "KEYLESS",
    "DemoError",
    "DemoPlan",
    "key_problems",
    "main",
    "plan",
    "port_problems",
    "run",
]
