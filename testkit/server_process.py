"""What every server the end-to-end tests run as a subprocess shares: one process in its
own session, its output in a log file of its work directory, a bounded wait until it is
ready, and a stop that always ends it (SIGTERM, then SIGKILL).

:class:`~testkit.livekit_server.LiveKitServer` and :class:`~testkit.redis_server.RedisServer`
build on it.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

GRACE_TIMEOUT = 3.0
STOP_TIMEOUT = 10.0


def _ephemeral_ports() -> range:
    """The ports the kernel hands out to outgoing connections and to ``bind(0)``."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A TCP (or UDP) port on 127.0.0.1 with nothing bound to it (as of now), below the
    kernel's ephemeral range: a port from ``bind(0)`` may be taken by any outgoing
    connection before the server binds it (a livekit-server failed to start with "address
    already in use" while workers were connecting)."""
    ephemeral = _ephemeral_ports()
    candidates = range(10000, ephemeral.start) if ephemeral.start > 11000 else range(0)
    for _ in range(50):
        port = random.choice(candidates) if candidates else 0
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            found: int = sock.getsockname()[1]
            return found
    raise RuntimeError("no free port below the ephemeral range after 50 tries")


def log_tail(path: Path, lines: int = 30, *, name: str = "server") -> str:
    """The last ``lines`` of a server's log file (for the error saying it did not start)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = ""
    return "\n".join(text.splitlines()[-lines:]) if text else f"(no {name} log)"


class ServerProcess:
    """One server subprocess; subclasses define :meth:`start` with :meth:`_spawn` and
    :meth:`_wait_ready`. ``with server: ...`` starts and stops it."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _spawn(self, argv: list[str]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )

    def _wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        """Poll ``ready()`` until it is true; a process that exits or stays unready past
        ``timeout`` is stopped and reported with the end of its log."""
        deadline = time.monotonic() + timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.log_tail()}")
            if ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)  # polling a subprocess that offers no readiness event

    def stop(self) -> None:
        """End the process (safe to call twice): SIGTERM; a second one if it is still
        running after GRACE_TIMEOUT (livekit-server takes it as "now": a node stopped just
        after it started can otherwise sit out its whole graceful shutdown); SIGKILL after
        STOP_TIMEOUT."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(GRACE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._proc.terminate()
            try:
                self._proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines, name=self.name)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
