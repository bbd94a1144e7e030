"""The fleet compose file (docker/docker-compose.fleet.yml) and its LiveKit config
(docker/livekit-fleet.yaml): two livekit-server nodes in multi-node mode sharing a Redis,
two workers sharing PostgreSQL, the page.

No docker engine is needed: the compose file is parsed as YAML and its wiring checked
(each node on ports of its own, published as it advertises them; both nodes on the same
Redis and keys; each worker on its own node, its own outbox volume and the shared
database), its images against what the tests run, and the LiveKit config against the
pinned livekit-server itself, which refuses an unknown key.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from typing import Any
from urllib.parse import urlparse

import pytest

from clara_voice.config import Settings
from testkit.livekit_server import ROOT, ServerMissingError, server_binary, server_version
from testkit.redis_server import RedisMissingError, redis_version
from tests.test_docker import (
    DOCKERFILE,
    Published,
    _environment,
    _healthcheck,
    _published,
    _seconds,
    parse_dockerfile,
    yaml_mapping,
)

FLEET_FILE = ROOT / "docker" / "docker-compose.fleet.yml"
LIVEKIT_CONFIG = ROOT / "docker" / "livekit-fleet.yaml"
NODES = ("livekit-a", "livekit-b")
WORKERS = ("worker-1", "worker-2")
REDIS_PORT = 6379
# Settings of issue 17 that other branches add; drop each once Settings has it.
LANDING_ELSEWHERE: frozenset[str] = frozenset()
KNOWN_VARIABLES = frozenset(Settings.env_name(n) for n in Settings.model_fields) | LANDING_ELSEWHERE
_REQUIRED = re.compile(r"\$\{(\w+):\?[^}]*\}")
_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


def _value(text: str, **given: str) -> str:
    """What compose makes of ``text`` with the variables ``given`` (others take defaults)."""
    text = _REQUIRED.sub(lambda m: given[m.group(1)], text)
    return _DEFAULTED.sub(lambda m: given.get(m.group(1), m.group(2)), text)


@pytest.fixture(scope="module")
def fleet() -> dict[str, Any]:
    return yaml_mapping(FLEET_FILE)


@pytest.fixture(scope="module")
def services(fleet: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = fleet["services"]
    return found


@pytest.fixture(scope="module")
def livekit_config() -> dict[str, Any]:
    return yaml_mapping(LIVEKIT_CONFIG)


def _node_ports(node: dict[str, Any]) -> dict[str, int]:
    words = node["command"] if isinstance(node["command"], list) else shlex.split(node["command"])
    flags = dict(zip(words[::2], words[1::2], strict=True))
    return {
        "signal": int(flags["--port"]),
        "tcp": int(flags["--rtc.tcp_port"]),
        "udp": int(flags["--udp-port"]),
    }


def test_the_fleet_has_its_parts(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"redis", *NODES, "postgres", *WORKERS, "web"}


# -- pins ------------------------------------------------------------------------------


def test_livekit_is_the_version_the_tests_build(services: dict[str, dict[str, Any]]) -> None:
    for node in NODES:
        assert services[node]["image"] == f"livekit/livekit-server:{server_version()}"


def test_redis_is_the_version_the_multinode_tests_run(services: dict[str, dict[str, Any]]) -> None:
    try:
        version = redis_version()
    except RedisMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    assert services["redis"]["image"] == f"redis:{version}-bookworm"


def test_postgres_is_pinned_to_a_release_of_debian_12s_major(
    services: dict[str, dict[str, Any]],
) -> None:
    repository, _, tag = services["postgres"]["image"].partition(":")
    assert repository == "postgres"
    assert re.fullmatch(r"15\.\d+-bookworm", tag), tag


# -- LiveKit in multi-node mode ---------------------------------------------------------


def test_the_livekit_config_is_one_the_pinned_server_accepts() -> None:
    """livekit-server parses the file in strict mode: a misspelt key fails its start."""
    try:
        binary = server_binary()
    except ServerMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    result = subprocess.run(
        [str(binary), "--config", str(LIVEKIT_CONFIG), "ports"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "could not parse config" not in (result.stdout + result.stderr).lower(), result
    assert "TCP Ports" in result.stdout, result


def test_both_nodes_share_the_redis_and_the_config(
    services: dict[str, dict[str, Any]], livekit_config: dict[str, Any]
) -> None:
    host, _, port = livekit_config["redis"]["address"].partition(":")
    assert host in services and services[host] is services["redis"]
    assert int(port or REDIS_PORT) == REDIS_PORT
    for node in NODES:
        words = services[node]["command"]
        config = words[words.index("--config") + 1]
        [mount] = [v for v in services[node]["volumes"] if v.split(":")[1] == config]
        assert (FLEET_FILE.parent / mount.split(":")[0]).resolve() == LIVEKIT_CONFIG
        assert "redis" in services[node]["depends_on"]
    assert "development" not in livekit_config  # a fleet has real keys, not the dev pair


def test_each_node_has_its_own_ports_published_as_advertised(
    services: dict[str, dict[str, Any]],
) -> None:
    ports = {node: _node_ports(services[node]) for node in NODES}
    all_ports = [p for node in NODES for p in ports[node].values()]
    assert len(set(all_ports)) == len(all_ports), ports
    for node in NODES:
        published = set(_published(services[node]))
        # a client is told the node's own ports: the host must publish them unchanged
        assert Published(ports[node]["signal"], ports[node]["signal"], "tcp") in published
        assert Published(ports[node]["tcp"], ports[node]["tcp"], "tcp") in published
        assert Published(ports[node]["udp"], ports[node]["udp"], "udp") in published


def test_both_nodes_and_every_client_use_one_key_pair(services: dict[str, dict[str, Any]]) -> None:
    given = {"LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s" * 32}
    keys = {_value(_environment(services[n])["LIVEKIT_KEYS"], **given) for n in NODES}
    assert keys == {"k: " + "s" * 32}
    for name in (*WORKERS, "web"):
        env = _environment(services[name])
        assert _value(env["LIVEKIT_API_KEY"], **given) == "k"
        assert _value(env["LIVEKIT_API_SECRET"], **given) == "s" * 32


def test_no_secret_has_a_default(fleet: dict[str, Any]) -> None:
    text = FLEET_FILE.read_text(encoding="utf-8")
    for variable in ("LIVEKIT_API_SECRET", "POSTGRES_PASSWORD"):
        uses = re.findall(rf"\$\{{{variable}([^}}]*)\}}", text)
        assert uses, variable
        assert all(use.startswith(":?") for use in uses), (variable, uses)


def test_redis_keeps_nothing_on_disk(services: dict[str, dict[str, Any]]) -> None:
    command = services["redis"]["command"]
    assert command[command.index("--save") + 1] == ""
    assert command[command.index("--appendonly") + 1] == "no"


# -- the workers -------------------------------------------------------------------------


def test_each_worker_registers_with_its_own_node(services: dict[str, dict[str, Any]]) -> None:
    nodes = set()
    for worker in WORKERS:
        url = urlparse(_environment(services[worker])["LIVEKIT_URL"])
        assert url.scheme == "ws"
        assert url.hostname in NODES
        assert url.port == _node_ports(services[url.hostname])["signal"]
        nodes.add(url.hostname)
    assert nodes == set(NODES)


def test_workers_share_the_database_and_keep_their_own_outbox(
    fleet: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    postgres = _environment(services["postgres"])
    volumes = []
    for worker in WORKERS:
        env = _environment(services[worker])
        assert env["CLARA_BACKEND"] == "postgres"
        url = urlparse(_value(env["CLARA_DATABASE_URL"], POSTGRES_PASSWORD="pw"))
        assert (url.scheme, url.hostname, url.port) == ("postgresql", "postgres", 5432)
        assert (url.username, url.password) == (postgres["POSTGRES_USER"], "pw")
        assert url.path == f"/{postgres['POSTGRES_DB']}"
        assert services[worker]["depends_on"]["postgres"]["condition"] == "service_healthy"
        [volume] = [v.split(":")[0] for v in services[worker]["volumes"]]
        assert f"{volume}:{env['CLARA_DATA_DIR']}" in services[worker]["volumes"]
        assert volume in fleet["volumes"]
        volumes.append(volume)
    assert len(set(volumes)) == len(WORKERS), "two workers must never share an outbox volume"


def test_workers_run_the_image_as_the_one_machine_stack_does(
    services: dict[str, dict[str, Any]],
) -> None:
    runtime = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))[-1]
    options, probe = _healthcheck(runtime.last("HEALTHCHECK"))
    hosts = set()
    for worker in WORKERS:
        service = services[worker]
        env = _environment(service)
        assert (
            FLEET_FILE.parent / service["build"]["context"] / service["build"]["dockerfile"]
        ).resolve() == DOCKERFILE
        assert service["healthcheck"]["test"] == ["CMD", *probe]
        assert service["init"] is True
        drain = Settings.model_fields["drain_timeout"].default
        closing = Settings.model_fields["job_shutdown_timeout"].default
        assert _seconds(service["stop_grace_period"]) > drain + closing
        ours = {n for n in env if n.startswith(("CLARA_", "LIVEKIT_"))}
        assert ours <= KNOWN_VARIABLES, sorted(ours - KNOWN_VARIABLES)
        published = {p.container: p.host for p in _published(service)}
        assert published[int(env["CLARA_HTTP_PORT"])] not in hosts
        hosts |= set(published.values())
    assert options["interval"] == services[WORKERS[0]]["healthcheck"]["interval"]


def test_the_page_stays_on_this_machine(services: dict[str, dict[str, Any]]) -> None:
    web = services["web"]
    assert web["command"] == ["python", "-m", "clara_voice", "web"]
    [published] = web["ports"]
    assert published.startswith("127.0.0.1:")
    url = urlparse(_value(_environment(web)["CLARA_WEB_LIVEKIT_URL"]))
    signal = _node_ports(services["livekit-a"])["signal"]
    assert (url.hostname, url.port) == ("localhost", signal)
