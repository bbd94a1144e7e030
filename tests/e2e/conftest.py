"""Fixtures of the end-to-end tests: a real livekit-server (one per test session), a fleet
of two livekit-server nodes in multi-node mode sharing a Redis server (one per test
session, started by the first test that asks for it), the provider loopback peers, and
the real worker as a subprocess (one per test).

These tests need the private network of ``scripts/private-net`` (``make check`` runs the
suite inside it), or, on a machine with a real network interface, ``CLARA_E2E_HOST_NETWORK=1``;
and the livekit-server binary of ``scripts/livekit-server`` (the fleet also Debian's
``redis-server``). Without either they fail with
one line saying how to get it; they never skip.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from livekit import api

from testkit.livekit_server import LiveKitFleet, LiveKitServer, ServerMissingError
from testkit.loopback_providers import LoopbackDeepgram, LoopbackOpenAI
from testkit.network import Outage, outage_unavailable
from testkit.redis_server import RedisMissingError
from testkit.worker import (
    STARTUP_TIMEOUT,
    WorkerProcess,
    free_port,
    is_event,
    running_worker,
    worker_env,
)

PRIVATE_NETWORK_HINT = (
    "the end-to-end tests run inside a private network namespace: run them through "
    "`scripts/private-net` (as `make check` does), or set CLARA_E2E_HOST_NETWORK=1 on a "
    "machine with a real network interface"
)


@pytest.fixture(scope="session")
def private_network() -> None:
    """Fails unless the tests run in the private network (session scope: checked before the
    suite's per-test fixture clears the CLARA_* variables)."""
    if os.environ.get("CLARA_PRIVATE_NET") != "1" and not os.environ.get("CLARA_E2E_HOST_NETWORK"):
        pytest.fail(PRIVATE_NETWORK_HINT, pytrace=False)


def _started(fleet: LiveKitFleet) -> LiveKitFleet:
    try:
        fleet.start()
    except (ServerMissingError, RedisMissingError) as exc:
        pytest.fail(str(exc), pytrace=False)
    return fleet


@pytest.fixture(scope="session")
def livekit_server(
    private_network: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveKitServer]:
    try:
        server = LiveKitServer(tmp_path_factory.mktemp("livekit"))
        server.start()
    except ServerMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
async def _rooms_end_with_their_test(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """The rooms a test leaves on the session's server are deleted when it ends: a worker
    killed with its test leaves its agent and people in them until the server times them
    out, and the next test's worker, whose watcher heals any room with a person and no
    live Clara, would serve them."""
    yield
    if "livekit_server" not in request.fixturenames:
        return
    server: LiveKitServer = request.getfixturevalue("livekit_server")
    lkapi = server.api()
    try:
        listed = await lkapi.room.list_rooms(api.ListRoomsRequest())
        for room in listed.rooms:
            await lkapi.room.delete_room(api.DeleteRoomRequest(room=room.name))
    finally:
        await lkapi.aclose()


@pytest.fixture(scope="session")
def livekit_fleet(
    private_network: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveKitFleet]:
    """Two livekit-server nodes in multi-node mode sharing a Redis server (one per test
    session; a test that stops or breaks a node makes a fleet of its own with
    ``new_fleet``)."""
    fleet = _started(LiveKitFleet(tmp_path_factory.mktemp("fleet")))
    try:
        yield fleet
    finally:
        fleet.stop()


NewFleet = Callable[..., LiveKitFleet]


@pytest.fixture
def new_fleet(private_network: None, tmp_path: Path) -> Iterator[NewFleet]:
    """Makes fleets of the test's own: ``new_fleet(nodes=2, start=True)``; every one is
    stopped when the test ends."""
    fleets: list[LiveKitFleet] = []

    def make(*, nodes: int = 2, start: bool = True) -> LiveKitFleet:
        fleet = LiveKitFleet(tmp_path / f"fleet-{len(fleets)}", nodes=nodes)
        fleets.append(fleet)
        return _started(fleet) if start else fleet

    try:
        yield make
    finally:
        for fleet in fleets:
            fleet.stop()


@pytest.fixture
def outage() -> Iterator[Outage]:
    """Cuts the network of the processes in the client group (testkit/network.py) on demand;
    the rules are removed when the test ends."""
    if (why := outage_unavailable()) is not None:
        pytest.fail(why, pytrace=False)
    outage = Outage()
    outage.install()
    try:
        yield outage
    finally:
        outage.uninstall()


class Providers:
    """The loopback stand-ins for Deepgram and OpenAI (LLM and TTS) the worker talks to."""

    def __init__(self, openai: LoopbackOpenAI, deepgram: LoopbackDeepgram) -> None:
        self.openai = openai
        self.deepgram = deepgram

    def env(self) -> dict[str, str]:
        return {
            "CLARA_STT_PROVIDER": "deepgram",
            "CLARA_STT_BASE_URL": self.deepgram.base_url,
            "CLARA_LLM_BASE_URL": self.openai.base_url,
            "CLARA_TTS_BASE_URL": self.openai.base_url,
        }


@pytest.fixture
def room_name(request: pytest.FixtureRequest) -> str:
    """A room of the test's own: the server dispatches an agent only to a new room, and
    rooms outlive a test on the shared server."""
    return f"{request.node.name.removeprefix('test_')[:40]}-{secrets.token_hex(3)}"


@pytest.fixture
async def providers() -> AsyncIterator[Providers]:
    async with LoopbackOpenAI() as openai, LoopbackDeepgram() as deepgram:
        yield Providers(openai, deepgram)


StartClara = Callable[..., Awaitable[WorkerProcess]]


StartWorker = Callable[..., Awaitable[WorkerProcess]]


@pytest.fixture
async def workers(providers: Providers, tmp_path: Path) -> AsyncIterator[StartWorker]:
    """Start workers (``python -m clara_voice start``, or ``command``) against any server:
    ``start(server, name, **settings)``; each has its folder ``tmp_path / name`` (its data
    directory inside; no name: ``tmp_path`` itself) and is killed, with its process group,
    when the test ends."""
    async with AsyncExitStack() as stack:

        async def start(
            server: LiveKitServer,
            name: str = "",
            command: Sequence[str] | None = None,
            **settings: str,
        ) -> WorkerProcess:
            folder = tmp_path / name
            folder.mkdir(exist_ok=True)
            env = worker_env(
                url=server.url,
                api_key=server.api_key,
                api_secret=server.api_secret,
                http_port=free_port(),
                CLARA_DATA_DIR=str(folder / "data"),
                CLARA_RECONNECT_GRACE_PERIOD="5",
                **providers.env(),
            )
            env.update(settings)
            worker = await stack.enter_async_context(running_worker(env, folder, command))
            await worker.wait_line(
                is_event("registered worker"), "saying it registered", timeout=STARTUP_TIMEOUT
            )
            return worker

        yield start


@pytest.fixture
async def clara(livekit_server: LiveKitServer, workers: StartWorker) -> StartClara:
    """Start ``python -m clara_voice start`` (or ``command``) against the session's server
    (extra settings as keyword arguments), its data in ``tmp_path / "data"``; it is killed,
    with its process group, when the test ends."""

    async def start(command: Sequence[str] | None = None, **settings: str) -> WorkerProcess:
        return await workers(livekit_server, "", command, **settings)

    return start
