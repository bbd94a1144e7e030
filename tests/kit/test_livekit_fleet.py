"""The multi-node harness itself (testkit/livekit_server.py's LiveKitFleet): it comes up
with every node registered in the shared Redis, and whether it stops or fails to start,
it leaves no process behind. Runs inside the private network, like the end-to-end tests."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from testkit.livekit_server import LiveKitFleet, ServerMissingError
from testkit.redis_server import RedisMissingError


@pytest.fixture(scope="module", autouse=True)
def _private_network() -> None:
    # module scope: checked before the suite's per-test fixture clears CLARA_* variables
    if os.environ.get("CLARA_PRIVATE_NET") != "1" and not os.environ.get("CLARA_E2E_HOST_NETWORK"):
        pytest.fail("run through `scripts/private-net` (it starts livekit-server)", pytrace=False)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _start(fleet: LiveKitFleet) -> None:
    try:
        fleet.start()
    except (ServerMissingError, RedisMissingError) as exc:
        pytest.fail(str(exc), pytrace=False)


def test_a_fleet_comes_up_registered_and_goes_down_entirely(tmp_path: Path) -> None:
    fleet = LiveKitFleet(tmp_path)
    _start(fleet)
    try:
        node_a, node_b = fleet.nodes
        assert node_a.node_id and node_b.node_id and node_a.node_id != node_b.node_id
        assert fleet.registered_nodes() == {node_a.node_id, node_b.node_id}
        assert node_a.port != node_b.port
        assert node_a.api_secret == node_b.api_secret
        assert "using single-node routing" not in node_a.log_text()
        pids = [p for p in (fleet.redis.pid, node_a.pid, node_b.pid) if p is not None]
        assert len(pids) == 3
    finally:
        fleet.stop()
    assert all(_gone(pid) for pid in pids)
    fleet.stop()  # twice is fine


def test_a_node_that_cannot_start_takes_the_fleet_down(tmp_path: Path) -> None:
    fleet = LiveKitFleet(tmp_path)
    node_b = fleet.nodes[1]
    with socket.socket() as squatter:  # node B's signalling port is taken
        squatter.bind(("127.0.0.1", node_b.port))
        squatter.listen()
        with pytest.raises(RuntimeError, match="livekit-server exited"):
            _start(fleet)
        pids = [fleet.redis.pid, fleet.nodes[0].pid, node_b.pid]
    assert pids == [None, None, None]
    assert (tmp_path / "redis" / "redis-server.log").is_file()  # it was started, then stopped
