"""A real livekit-server for the end-to-end tests, on loopback, with free ports.

The binary is the one ``scripts/livekit-server`` builds from livekit-server's Go module
(or ``LIVEKIT_SERVER_BIN``). :class:`LiveKitServer` runs it with the configuration
``python -m clara_voice demo`` uses (``clara_voice._livekit_server``, whose docstring says
why each setting), which works in the private network the tests run in
(``scripts/private-net``): signalling and the server API on 127.0.0.1, WebRTC on one UDP
port of the loopback addresses (and one TCP port), ICE candidates on 127.0.0.1 only, keys
of its own. It is ready when ``GET /`` answers 200.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

from livekit import api

from clara_voice._livekit_server import ServerBinaryError, find_server_binary, server_config

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / "scripts" / "livekit-server"
API_KEY = "clara-e2e"
READY_TIMEOUT = 20.0


class ServerMissingError(RuntimeError):
    """No livekit-server binary to run."""


def server_binary() -> Path:
    """The livekit-server the tests run; :class:`ServerMissingError` when there is none."""
    try:
        return find_server_binary(None, ROOT)  # the script honours LIVEKIT_SERVER_BIN
    except ServerBinaryError as exc:
        raise ServerMissingError(str(exc)) from None


def server_version() -> str:
    """The livekit-server version the project pins (``VERSION=`` in scripts/livekit-server)."""
    for line in BUILD_SCRIPT.read_text().splitlines():
        if line.startswith("VERSION="):
            return line.removeprefix("VERSION=").strip()
    raise AssertionError(f"{BUILD_SCRIPT} names no VERSION")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A TCP (or UDP) port on 127.0.0.1 with nothing bound to it (as of now)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveKitServer:
    """One livekit-server process; ``with LiveKitServer(workdir) as server: ...``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.api_key = API_KEY
        self.api_secret = secrets.token_hex(24)
        self.log_path = workdir / "livekit-server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where clients and the worker connect (``LIVEKIT_URL``)."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """The server API's address, for livekit-api."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = server_binary()
        config = self.workdir / "livekit.yaml"
        config.write_text(
            server_config(
                port=self.port,
                api_key=self.api_key,
                api_secret=self.api_secret,
                rtc_udp=free_port(socket.SOCK_DGRAM),
                rtc_tcp=free_port(),
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [str(binary), "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"livekit-server exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.http_url + "/", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"livekit-server not ready after {READY_TIMEOUT}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)  # polling a subprocess that offers no readiness event

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def token(
        self,
        identity: str,
        room: str,
        *,
        attributes: dict[str, str] | None = None,
        name: str | None = None,
    ) -> str:
        """A room-join token for ``identity`` (its participant attributes set at join)."""
        token = (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_name(name or identity)
            .with_grants(api.VideoGrants(room_join=True, room=room))
        )
        if attributes:
            token = token.with_attributes(attributes)
        return token.to_jwt()

    def api(self) -> api.LiveKitAPI:
        """A server API client (close it with ``aclose``)."""
        return api.LiveKitAPI(self.http_url, self.api_key, self.api_secret)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
