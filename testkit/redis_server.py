"""A real Redis server for the multi-node tests: Debian's ``redis-server`` on loopback.

LiveKit's multi-node mode keeps its node list and its room → node map in Redis and relays
signalling between nodes through it (``testkit.livekit_server.LiveKitFleet``).
:class:`RedisServer` starts ``redis-server`` on 127.0.0.1 with a free port, no persistence
(no RDB snapshot, no append-only file) and protected mode on, and stops it after.
:meth:`RedisServer.command` speaks just enough of the Redis protocol (RESP) for a test to
read what LiveKit wrote.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from testkit.server_process import ServerProcess, free_port

BINARY = "redis-server"
READY_TIMEOUT = 10.0
COMMAND_TIMEOUT = 5.0
INSTALL_HINT = "install Debian's redis-server (`apt-get install redis-server`; .ci/run does)"

Reply = str | int | bytes | list[Any] | None


class RedisMissingError(RuntimeError):
    """No redis-server to run."""


class RedisReplyError(RuntimeError):
    """Redis answered a command with an error."""


def redis_binary() -> str:
    """The redis-server on PATH; :class:`RedisMissingError` (one line) when there is none."""
    found = shutil.which(BINARY)
    if found is None:
        raise RedisMissingError(f"no {BINARY} on PATH: {INSTALL_HINT}")
    return found


def redis_version() -> str:
    """The version of the redis-server the tests run (``7.0.15``)."""
    output = subprocess.run(
        [redis_binary(), "--version"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    match = re.search(r"\bv=(\d+\.\d+\.\d+)", output)
    assert match, f"unexpected `{BINARY} --version` output: {output!r}"
    return match.group(1)


def _encode(args: tuple[str, ...]) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(stream: Any) -> Reply:
    line: bytes = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("redis closed the connection mid-reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise RedisReplyError(body.decode())
    if kind == b":":
        return int(body)
    if kind == b"$":
        length = int(body)
        if length < 0:
            return None
        data: bytes = stream.read(length + 2)
        return data[:-2]
    if kind == b"*":
        count = int(body)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise ConnectionError(f"unexpected redis reply {line!r}")


class RedisServer(ServerProcess):
    """One ``redis-server`` process on 127.0.0.1; ``with RedisServer(workdir) as redis:``."""

    name = "redis-server"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.port = free_port()

    @property
    def address(self) -> str:
        """``host:port``, as LiveKit's ``redis.address`` takes it."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._spawn(
            [
                redis_binary(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--protected-mode",
                "yes",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.workdir),
                "--logfile",
                "",
            ]
        )
        self._wait_ready(self._answers_ping, READY_TIMEOUT)

    def _answers_ping(self) -> bool:
        try:
            return self.command("PING") == "PONG"
        except OSError:
            return False

    def command(self, *args: str) -> Reply:
        """Send one command, return its reply (bulk strings as bytes)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=COMMAND_TIMEOUT) as sock:
            sock.sendall(_encode(args))
            with sock.makefile("rb") as stream:
                return _read_reply(stream)
