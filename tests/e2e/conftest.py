"""Fixtures of the end-to-end tests: a real livekit-server (one per test session), the
provider loopback peers, and the real worker as a subprocess (one per test).

These tests need the private network of ``scripts/private-net`` (``make check`` runs the
suite inside it), or, on a machine with a real network interface, ``CLARA_E2E_HOST_NETWORK=1``;
and the livekit-server binary of ``scripts/livekit-server``. Without either they fail with
one line saying how to get it; they never skip.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from testkit.livekit_server import LiveKitServer, ServerMissingError
from testkit.loopback_providers import LoopbackDeepgram, LoopbackOpenAI
from testkit.network import Outage, outage_unavailable
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
    """Fails the test (one line) unless it runs where nothing it sends leaves the machine
    (session-scoped: it reads the environment before each test's own is cleared)."""
    if os.environ.get("CLARA_PRIVATE_NET") != "1" and not os.environ.get("CLARA_E2E_HOST_NETWORK"):
        pytest.fail(PRIVATE_NETWORK_HINT, pytrace=False)


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


@pytest.fixture
async def clara(
    livekit_server: LiveKitServer, providers: Providers, tmp_path: Path
) -> AsyncIterator[StartClara]:
    """Start ``python -m clara_voice start`` against the server (extra settings as keyword
    arguments); it is killed, with its process group, when the test ends."""
    async with AsyncExitStack() as stack:

        async def start(**settings: str) -> WorkerProcess:
            env = worker_env(
                url=livekit_server.url,
                api_key=livekit_server.api_key,
                api_secret=livekit_server.api_secret,
                http_port=free_port(),
                CLARA_DATA_DIR=str(tmp_path / "data"),
                CLARA_RECONNECT_GRACE_PERIOD="5",
                **providers.env(),
            )
            env.update(settings)
            worker = await stack.enter_async_context(running_worker(env, tmp_path))
            await worker.wait_line(
                is_event("registered worker"), "saying it registered", timeout=STARTUP_TIMEOUT
            )
            return worker

        yield start
