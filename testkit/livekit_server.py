"""A real livekit-server for the end-to-end tests, on loopback, with free ports; alone or
as a fleet of nodes in LiveKit's multi-node mode.

The binary is the one ``scripts/livekit-server`` builds from livekit-server's Go module
(or ``LIVEKIT_SERVER_BIN``). :class:`LiveKitServer` runs it with the configuration
``python -m clara_voice demo`` uses (``clara_voice._livekit_server``, whose docstring says
why each setting), which works in the private network the tests run in
(``scripts/private-net``): signalling and the server API on 127.0.0.1, WebRTC on one UDP
port of the loopback addresses (and one TCP port), ICE candidates on 127.0.0.1 only, keys
of its own. It is ready when ``GET /`` answers 200.

:class:`LiveKitFleet` runs several nodes that share one Redis server
(:class:`~testkit.redis_server.RedisServer`) and one key pair, each with its own ports, as
a LiveKit deployment of several machines does: a room lives on one node (Redis maps it),
and a client that connects through another node has its signalling relayed there. It is
ready when every node has registered itself in Redis.
"""

from __future__ import annotations

import re
import secrets
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

from livekit import api

from clara_voice._livekit_server import ServerBinaryError, find_server_binary, server_config
from testkit.redis_server import RedisServer
from testkit.server_process import ServerProcess
from testkit.server_process import free_port as free_port

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / "scripts" / "livekit-server"
API_KEY = "clara-e2e"
AGENT_NAME = "clara"
"""The agent name the workers register with (``CLARA_AGENT_NAME``'s default)."""
READY_TIMEOUT = 20.0
# livekit-server's Redis keys (pkg/routing/redisrouter.go): node id → node, room → node id
NODES_KEY = "nodes"
ROOM_NODE_KEY = "room_node_map"
_NODE_ID = re.compile(r'"nodeID": "(\w+)"')


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


class LiveKitServer(ServerProcess):
    """One livekit-server process; ``with LiveKitServer(workdir) as server: ...``.

    ``redis`` (``host:port``) makes it a node of a multi-node deployment; nodes of one
    deployment share ``api_secret``.
    """

    name = "livekit-server"

    def __init__(
        self, workdir: Path, *, redis: str | None = None, api_secret: str | None = None
    ) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.api_key = API_KEY
        self.api_secret = api_secret or secrets.token_hex(24)
        self.redis = redis
        self.node_id: str | None = None
        """The node's id (``ND_…``), as it logged it at start."""

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
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "livekit.yaml"
        config.write_text(
            server_config(
                port=self.port,
                api_key=self.api_key,
                api_secret=self.api_secret,
                rtc_udp=free_port(socket.SOCK_DGRAM),
                rtc_tcp=free_port(),
                redis=self.redis,
            )
        )
        self._spawn([str(binary), "--config", str(config)])
        self._wait_ready(self._answers, READY_TIMEOUT)
        match = _NODE_ID.search(self.log_text())
        self.node_id = match.group(1) if match else None

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + "/", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def token(
        self,
        identity: str,
        room: str,
        *,
        attributes: dict[str, str] | None = None,
        name: str | None = None,
        can_update_own_metadata: bool | None = None,
        agent_name: str | None = AGENT_NAME,
    ) -> str:
        """A room-join token for ``identity`` (its participant attributes set at join) that
        asks for the agent ``agent_name`` as clara's tokens do (``None``: a token that asks
        for none, as a backend unaware of clara's agent name mints)."""
        grants = api.VideoGrants(
            room_join=True, room=room, can_update_own_metadata=can_update_own_metadata
        )
        token = (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_name(name or identity)
            .with_grants(grants)
        )
        if attributes:
            token = token.with_attributes(attributes)
        if agent_name is not None:
            token = token.with_room_config(
                api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=agent_name)])
            )
        return token.to_jwt()

    def api(self) -> api.LiveKitAPI:
        """A server API client (close it with ``aclose``)."""
        return api.LiveKitAPI(self.http_url, self.api_key, self.api_secret)


class LiveKitFleet:
    """``nodes`` livekit-server nodes in multi-node mode, sharing one Redis server and one
    key pair, each on its own ports; ``with LiveKitFleet(workdir) as fleet: ...``."""

    def __init__(self, workdir: Path, *, nodes: int = 2) -> None:
        assert nodes >= 2, "a fleet has at least two nodes"
        self.redis = RedisServer(workdir / "redis")
        secret = secrets.token_hex(24)
        self.nodes = [
            LiveKitServer(
                workdir / f"node-{chr(ord('a') + i)}", redis=self.redis.address, api_secret=secret
            )
            for i in range(nodes)
        ]

    def start(self) -> None:
        try:
            self.redis.start()
            for node in self.nodes:
                node.start()
            self._wait_registered()
        except BaseException:
            self.stop()
            raise

    def _wait_registered(self) -> None:
        """Until every node is in Redis' node list (the room allocator picks from it)."""
        deadline = time.monotonic() + READY_TIMEOUT
        expected = {node.node_id for node in self.nodes}
        while self.registered_nodes() != expected:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"livekit nodes {sorted(map(str, expected))} not all registered in redis "
                    f"after {READY_TIMEOUT}s (have {sorted(self.registered_nodes())})"
                )
            time.sleep(0.05)  # polling Redis, which offers no event for it

    def registered_nodes(self) -> set[str]:
        """The node ids LiveKit's nodes registered in Redis."""
        reply = self.redis.command("HKEYS", NODES_KEY)
        assert isinstance(reply, list)
        return {key.decode() for key in reply}

    def room_node(self, room: str) -> str | None:
        """The id of the node a room lives on (LiveKit's room → node map in Redis)."""
        reply = self.redis.command("HGET", ROOM_NODE_KEY, room)
        assert reply is None or isinstance(reply, bytes)
        return None if reply is None else reply.decode()

    def node(self, node_id: str) -> LiveKitServer:
        return next(node for node in self.nodes if node.node_id == node_id)

    def stop(self) -> None:
        """Stop every node, then Redis (safe to call twice)."""
        for node in reversed(self.nodes):
            node.stop()
        self.redis.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
