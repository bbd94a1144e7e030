"""The container wiring: docker/Dockerfile, docker/docker-compose.yml and .dockerignore.

No docker engine is needed: the files are parsed (compose as YAML, the Dockerfile with the
small instruction parser below) and checked against what a user of the stack depends on
and against clara_voice's own settings, so that changing one side without the other
fails here rather than in a container.
"""

from __future__ import annotations

import ast
import fnmatch
import http.server
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from clara_voice.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE_FILE = ROOT / "docker" / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK_FILE = ROOT / "requirements.lock"

# What `livekit-server --dev` uses when given no keys and no config: the placeholder key
# pair it logs at start, its default signalling port, its default ICE/TCP port, and the
# single UDP port dev mode multiplexes all media on (instead of 50000-60000).
LIVEKIT_DEV_KEYS = {"LIVEKIT_API_KEY": "devkey", "LIVEKIT_API_SECRET": "secret"}
LIVEKIT_SIGNAL_PORT = 7880
LIVEKIT_RTC_TCP_PORT = 7881
LIVEKIT_DEV_UDP_PORT = 7882
# Options that would give the dev server other keys than the placeholder pair.
LIVEKIT_KEY_OPTIONS = ("--keys", "--key-file", "--config", "--config-body")
LIVEKIT_KEY_VARIABLES = ("LIVEKIT_KEYS", "LIVEKIT_CONFIG")

ROOT_USERS = {"root", "0"}

# Environment variables a worker container may be given: the ones Settings reads.
CLARA_VARIABLES = frozenset(Settings.env_name(name) for name in Settings.model_fields)


def _default(field_name: str) -> Any:
    value = Settings.model_fields[field_name].default
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


# -- a tiny Dockerfile parser ----------------------------------------------------------------

# Instructions whose arguments Docker itself expands ARG/ENV variables in. RUN, CMD and
# HEALTHCHECK are left to the shell (where ARG and ENV values are environment variables).
EXPANDED = frozenset(
    {
        "ADD",
        "ARG",
        "COPY",
        "ENV",
        "EXPOSE",
        "FROM",
        "LABEL",
        "STOPSIGNAL",
        "USER",
        "VOLUME",
        "WORKDIR",
    }
)
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def _expand(text: str, variables: dict[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))

    return _VARIABLE.sub(substitute, text)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    raw: str  # the arguments as written, continuation lines joined
    value: str  # the arguments with ARG/ENV variables known at that point substituted
    line: int

    def json_form(self) -> list[str] | None:
        """The arguments in exec (JSON array) form, or None for shell form."""
        if not self.value.startswith("["):
            return None
        parsed = json.loads(self.value)
        assert isinstance(parsed, list)
        return [str(item) for item in parsed]

    def words(self) -> list[str]:
        form = self.json_form()
        return form if form is not None else shlex.split(self.value)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for instruction in self.all("ENV"):
            env.update(_env_pairs(instruction))
        return env


def _env_pairs(instruction: Instruction) -> dict[str, str]:
    words = shlex.split(instruction.value)
    if words and "=" not in words[0]:  # legacy `ENV NAME value with spaces`
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, instruction) with continuations joined and comments dropped."""
    buffer: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments and blank lines may also sit inside a continuation
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        yield start, " ".join(part for part in buffer if part)
        buffer = []
    assert not buffer, "the Dockerfile ends inside a line continuation"


def parse_dockerfile(text: str) -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, logical in _logical_lines(text):
        keyword, _, raw = logical.partition(" ")
        keyword = keyword.upper()
        raw = raw.strip()
        scope = stages[-1].variables if stages else global_args
        value = _expand(raw, scope) if keyword in EXPANDED else raw
        instruction = Instruction(keyword, raw, value, line)
        if keyword == "FROM":
            words = value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"line {line}: only ARG may precede the first FROM"
            name, _, default = value.partition("=")
            global_args[name] = default
            continue
        else:
            stage = stages[-1]
            if keyword == "ARG":
                name, has_default, default = value.partition("=")
                stage.variables[name] = default if has_default else global_args.get(name, "")
            elif keyword == "ENV":
                stage.variables.update(_env_pairs(instruction))
        stages[-1].instructions.append(instruction)
    return stages


def _shell_words(instruction: Instruction, stage: Stage) -> list[str]:
    """A RUN's words with the stage's ARG/ENV values substituted, as its shell would."""
    return shlex.split(_expand(instruction.raw, stage.variables))


def _command_at(words: list[str], program: str) -> list[str]:
    """The simple command starting at ``program`` in a ``a && b`` chain of words."""
    start = words.index(program)
    ends = [i for i in range(start, len(words)) if words[i] in ("&&", "||", ";")]
    return words[start : ends[0] if ends else len(words)]


def _created_user(stage: Stage) -> tuple[str, str, str]:
    """(name, uid, home) of the user the stage creates with useradd."""
    for run in stage.all("RUN"):
        words = _shell_words(run, stage)
        if "useradd" in words:
            command = _command_at(words, "useradd")
            option = dict(itertools.pairwise(command))
            return command[-1], option["--uid"], option["--home-dir"]
    raise AssertionError("the stage creates no user")


def _healthcheck(instruction: Instruction) -> tuple[dict[str, str], list[str]]:
    options, _, command = instruction.raw.partition("CMD ")
    parsed = dict(word.removeprefix("--").split("=", 1) for word in options.split())
    form = json.loads(command) if command.startswith("[") else ["/bin/sh", "-c", command]
    return parsed, form


def _copy_parts(instruction: Instruction) -> tuple[dict[str, str], list[str], str]:
    """A COPY's --flags, sources and destination."""
    words = instruction.words()
    flags = dict(w.removeprefix("--").partition("=")[::2] for w in words if w.startswith("--"))
    *sources, destination = [w for w in words if not w.startswith("--")]
    return flags, sources, destination


def _user_of(instruction: Instruction) -> str:
    return instruction.value.split(":", 1)[0]


# -- compose helpers ---------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _interpolate_defaults(value: str) -> tuple[str, list[str]]:
    """The value compose gives when none of the variables is set, and their names."""
    names: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        names.append(match.group(1))
        return match.group(2) or ""

    return _INTERPOLATION.sub(substitute, value.replace("$$", "\0")).replace("\0", "$"), names


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {str(key): str(value) for key, value in environment.items()}


@dataclass(frozen=True)
class Published:
    host: int
    container: int
    protocol: str


def _published(service: dict[str, Any]) -> list[Published]:
    ports = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.append(
                Published(
                    int(entry["published"]), int(entry["target"]), entry.get("protocol", "tcp")
                )
            )
            continue
        mapping, _, protocol = str(entry).partition("/")
        *_, host, container = mapping.split(":")
        ports.append(Published(int(host), int(container), protocol or "tcp"))
    return ports


def _depends_on(service: dict[str, Any]) -> list[str]:
    depends = service.get("depends_on") or []
    return list(depends)  # a list, or a mapping of service name to condition


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


def yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (compose files, LiveKit's config)."""
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), f"{path} is not a mapping"
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml_mapping(COMPOSE_FILE)


@pytest.fixture(scope="module")
def livekit(compose: dict[str, Any]) -> dict[str, Any]:
    service: dict[str, Any] = compose["services"]["livekit"]
    return service


@pytest.fixture(scope="module")
def worker(compose: dict[str, Any]) -> dict[str, Any]:
    service: dict[str, Any] = compose["services"]["worker"]
    return service


@pytest.fixture(scope="module")
def worker_env(worker: dict[str, Any]) -> dict[str, str]:
    return {name: _interpolate_defaults(v)[0] for name, v in _environment(worker).items()}


# -- the parser itself ---------------------------------------------------------------------


def test_parser_joins_continuations_and_substitutes_variables() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=python:3.11-slim\n"
        "FROM ${BASE} AS one\n"
        "ARG UID=7\n"
        "RUN echo a \\\n"
        "    # a comment inside the continuation\n"
        "    && echo b\n"
        "ENV A=1 \\\n"
        '    B="two words"\n'
        "USER ${UID}:${UID}\n"
        'CMD ["python", "-m", "x"]\n'
    )
    [stage] = parse_dockerfile(text)
    assert (stage.base, stage.name) == ("python:3.11-slim", "one")
    assert stage.last("RUN").raw == "echo a && echo b"
    assert stage.last("RUN").line == 5
    assert stage.env() == {"A": "1", "B": "two words"}
    assert stage.last("USER").value == "7:7"
    assert stage.last("CMD").json_form() == ["python", "-m", "x"]


# -- compose -------------------------------------------------------------------------------


def test_compose_defines_the_livekit_server_and_the_worker(compose: dict[str, Any]) -> None:
    assert {"livekit", "worker"} <= set(compose["services"])
    assert "livekit" in _depends_on(compose["services"]["worker"])


def test_livekit_runs_a_pinned_dev_server_reachable_from_other_containers(
    livekit: dict[str, Any],
) -> None:
    repository, _, tag = livekit["image"].partition(":")
    assert repository == "livekit/livekit-server"
    assert tag and tag != "latest", "pin livekit-server to a version tag"
    command = livekit["command"]
    words = shlex.split(command) if isinstance(command, str) else list(command)
    assert "--dev" in words
    # --dev alone listens on 127.0.0.1: the worker container could not connect
    assert words[words.index("--bind") + 1] == "0.0.0.0"


def test_compose_pins_the_livekit_server_the_tests_build(livekit: dict[str, Any]) -> None:
    """The end-to-end tests run the server version docker-compose runs (one place writes
    it: scripts/livekit-server)."""
    from testkit.livekit_server import server_version

    assert livekit["image"] == f"livekit/livekit-server:{server_version()}"


def test_livekit_keeps_the_dev_placeholder_keys(livekit: dict[str, Any]) -> None:
    command = livekit["command"]
    words = shlex.split(command) if isinstance(command, str) else list(command)
    # livekit-server --dev uses devkey/secret only when it is given no keys at all
    assert not [w for w in words if w.split("=")[0] in LIVEKIT_KEY_OPTIONS]
    assert not set(_environment(livekit)) & set(LIVEKIT_KEY_VARIABLES)
    assert not livekit.get("env_file")


def test_livekit_publishes_signalling_and_media_ports(livekit: dict[str, Any]) -> None:
    published = set(_published(livekit))
    assert Published(LIVEKIT_SIGNAL_PORT, LIVEKIT_SIGNAL_PORT, "tcp") in published
    assert Published(LIVEKIT_RTC_TCP_PORT, LIVEKIT_RTC_TCP_PORT, "tcp") in published
    assert Published(LIVEKIT_DEV_UDP_PORT, LIVEKIT_DEV_UDP_PORT, "udp") in published


def test_worker_livekit_url_points_at_the_livekit_service(
    compose: dict[str, Any], livekit: dict[str, Any], worker_env: dict[str, str]
) -> None:
    url = urlparse(worker_env["LIVEKIT_URL"])
    assert url.scheme == "ws"
    assert url.hostname in compose["services"]
    assert compose["services"][url.hostname] is livekit
    # inside the compose network the container port counts, and the server listens on
    # its default signalling port
    assert url.port == LIVEKIT_SIGNAL_PORT
    signalling = [p for p in _published(livekit) if p.container == url.port]
    assert signalling, "the livekit service does not publish its signalling port"
    # and clara_voice's default URL (a worker run outside docker) reaches the same server
    # through the published port
    default = urlparse(_default("livekit_url"))
    assert default.hostname in ("localhost", "127.0.0.1")
    assert default.port in {p.host for p in signalling}


@pytest.mark.parametrize(
    ("variable", "field_name"),
    [("LIVEKIT_API_KEY", "livekit_api_key"), ("LIVEKIT_API_SECRET", "livekit_api_secret")],
)
def test_worker_credentials_are_the_livekit_dev_keys_and_clara_defaults(
    worker_env: dict[str, str], variable: str, field_name: str
) -> None:
    assert Settings.env_name(field_name) == variable
    assert worker_env[variable] == LIVEKIT_DEV_KEYS[variable]
    assert _default(field_name) == LIVEKIT_DEV_KEYS[variable]


def test_worker_sets_only_variables_clara_voice_reads(worker: dict[str, Any]) -> None:
    environment = _environment(worker)
    unknown = sorted(set(environment) - CLARA_VARIABLES)
    assert not unknown, f"clara_voice reads none of {unknown}"
    for name, value in environment.items():
        _, referenced = _interpolate_defaults(value)
        # `${VAR:-default}` overrides must use the variable's own name
        assert set(referenced) <= {name}, f"{name} is interpolated from {referenced}"


def test_worker_is_built_from_the_repository_with_the_dockerfile(
    worker: dict[str, Any], stages: list[Stage]
) -> None:
    build = worker["build"]
    context = (COMPOSE_FILE.parent / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    # no target: compose builds the last stage, which is the runtime one
    assert build.get("target", stages[-1].name) == stages[-1].name


def test_worker_env_file_is_optional(worker: dict[str, Any]) -> None:
    for entry in worker.get("env_file", []):
        assert isinstance(entry, dict), "a plain env_file entry fails when the file is absent"
        assert entry["required"] is False


def test_stop_grace_period_covers_the_drain_and_the_jobs_shutdown(
    worker_env: dict[str, str], worker: dict[str, Any]
) -> None:
    drain = int(worker_env.get(Settings.env_name("drain_timeout"), _default("drain_timeout")))
    closing = float(
        worker_env.get(Settings.env_name("job_shutdown_timeout"), _default("job_shutdown_timeout"))
    )
    assert _seconds(worker["stop_grace_period"]) > drain + closing


# -- the health endpoint -------------------------------------------------------------------


def _probe_port_default(command: list[str]) -> int:
    """The port the probe uses when CLARA_HTTP_PORT is unset: `environ.get(name, default)`."""
    assert command[:2] == ["python", "-c"]
    for node in ast.walk(ast.parse(command[2])):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and len(node.args) == 2
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == Settings.env_name("http_port")
        ):
            default = node.args[1]
            assert isinstance(default, ast.Constant)
            assert isinstance(default.value, str)  # environ values are strings
            return int(default.value)
    raise AssertionError(f"the probe does not read {Settings.env_name('http_port')}")


def test_health_port_agrees_everywhere(
    runtime: Stage, worker: dict[str, Any], worker_env: dict[str, str]
) -> None:
    port = _default("http_port")
    variable = Settings.env_name("http_port")
    assert int(worker_env[variable]) == port
    assert int(runtime.env()[variable]) == port
    exposed = [int(p) for e in runtime.all("EXPOSE") for p in e.value.split()]
    # health, metrics, then the web page
    assert exposed == [port, _default("prometheus_port"), _default("web_port")]
    published = {p.container for p in _published(worker)}
    assert {port, _default("prometheus_port")} <= published
    _, probe = _healthcheck(runtime.last("HEALTHCHECK"))
    assert probe[0] == "python"
    assert "http://127.0.0.1:" in probe[2]
    assert _probe_port_default(probe) == port


def test_compose_healthcheck_is_the_image_healthcheck(
    runtime: Stage, worker: dict[str, Any]
) -> None:
    options, probe = _healthcheck(runtime.last("HEALTHCHECK"))
    check = worker["healthcheck"]
    assert check["test"] == ["CMD", *probe]
    for option in ("interval", "timeout", "start-period", "retries"):
        assert str(check[option.replace("-", "_")]) == options[option], option


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = b"OK" if self.status == 200 else b"failed to connect to livekit"
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_probe_follows_the_endpoint(runtime: Stage, status: int, healthy: bool) -> None:
    _, probe = _healthcheck(runtime.last("HEALTHCHECK"))
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, Settings.env_name("http_port"): str(server.server_address[1])}
        result = subprocess.run(
            [sys.executable, *probe[1:]], env=env, capture_output=True, timeout=30, check=False
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert (result.returncode == 0) is healthy, result.stderr.decode()


# -- the Dockerfile ------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_a_supported_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for stage in stages:
        if stage.base.startswith("python:"):
            version = stage.base.removeprefix("python:").split("-")[0]
            assert version in SpecifierSet(requires["requires-python"]), stage.base
    earlier = {s.name for s in stages[:-1]}
    copies_from = {_copy_parts(copy)[0].get("from") for copy in stages[-1].all("COPY")}
    copies_from.discard(None)
    assert copies_from, "the runtime stage copies nothing from a build stage"
    assert copies_from <= earlier


def test_runtime_runs_the_builder_venv(stages: list[Stage], runtime: Stage) -> None:
    [(flags, [source], destination)] = [
        parts
        for copy in runtime.all("COPY")
        if (parts := _copy_parts(copy))[0].get("from") == "builder"
    ]
    assert source.rstrip("/") == destination.rstrip("/")
    builder = next(s for s in stages if s.name == flags["from"])
    assert any(
        _shell_words(run, builder)[:4] == ["python", "-m", "venv", source]
        for run in builder.all("RUN")
    )
    installs = [" ".join(_shell_words(run, builder)) for run in builder.all("RUN")]
    assert any("pip install --no-cache-dir -r requirements.lock" in i for i in installs)
    assert any("pip install --no-cache-dir --no-deps ." in i for i in installs)
    assert runtime.env()["PATH"].split(":")[0] == f"{destination}/bin"


def test_the_image_builds_the_web_page_from_its_lock(stages: list[Stage], runtime: Stage) -> None:
    web = next(s for s in stages if s.name == "web")
    assert re.fullmatch(r"node:\d+-\w+-slim", web.base)  # a major line, as python's is
    runs = [" ".join(_shell_words(run, web)) for run in web.all("RUN")]
    assert any(r.startswith("npm ci") for r in runs) and "npm run build" in runs
    [(_, [source], destination)] = [
        parts
        for copy in runtime.all("COPY")
        if (parts := _copy_parts(copy))[0].get("from") == "web"
    ]
    assert source == f"{web.last('WORKDIR').value}/dist"
    assert runtime.env()[Settings.env_name("web_dist")] == destination
    ignored = _dockerignore_patterns()
    assert _is_ignored("web/node_modules", ignored) and _is_ignored("web/dist", ignored)


def test_compose_serves_the_page_on_this_machine_only(compose: dict[str, Any]) -> None:
    web = compose["services"]["web"]
    assert web["command"] == ["python", "-m", "clara_voice", "web"]
    env = web["environment"]
    assert env[Settings.env_name("web_livekit_url")].endswith("ws://localhost:7880}")
    assert set(env) <= CLARA_VARIABLES
    # it listens on all of the container's interfaces, published on the host's loopback
    assert env[Settings.env_name("web_allow_remote")] == "true"
    [published] = web["ports"]
    assert published == f"127.0.0.1:{_default('web_port')}:{env['CLARA_WEB_PORT']}"
    assert web["image"] == compose["services"]["worker"]["image"]
    assert "3000/" in " ".join(web["healthcheck"]["test"])


def test_runtime_ends_as_a_non_root_user(runtime: Stage) -> None:
    user = _user_of(runtime.last("USER"))
    assert user not in ROOT_USERS
    name, uid, home = _created_user(runtime)
    assert user in (name, uid)
    assert uid not in ROOT_USERS
    assert runtime.env()["HOME"] == home


def test_model_files_are_downloaded_at_build_time_as_that_user(runtime: Stage) -> None:
    user = "root"
    downloads = []
    for instruction in runtime.instructions:
        if instruction.keyword == "USER":
            user = _user_of(instruction)
        elif instruction.keyword == "RUN" and "download-files" in instruction.words():
            downloads.append((user, instruction.words()))
    assert downloads, "the image does not run download-files"
    for user, words in downloads:
        assert user == _user_of(runtime.last("USER")), "download-files must run as the worker"
        # livekit-agents' module-level command: it finds every installed plugin, where
        # `python -m clara_voice download-files` only sees the ones clara_voice imports
        assert words == ["python", "-m", "livekit.agents", "download-files"]


def test_cmd_starts_the_worker(runtime: Stage) -> None:
    assert runtime.last("CMD").json_form() == ["python", "-m", "clara_voice", "start"]


def test_copy_sources_exist_and_are_not_dockerignored(stages: list[Stage]) -> None:
    ignored = _dockerignore_patterns()
    for stage in stages:
        for copy in stage.all("COPY"):
            flags, sources, _ = _copy_parts(copy)
            if "from" in flags:
                continue
            for source in sources:
                path = source.rstrip("/")
                assert (ROOT / path).exists(), f"COPY {source}: not in the repository"
                assert not _is_ignored(path, ignored), f"COPY {source}: .dockerignore drops it"


def test_data_dir_is_the_volume_everywhere(
    runtime: Stage, worker: dict[str, Any], worker_env: dict[str, str], compose: dict[str, Any]
) -> None:
    variable = Settings.env_name("data_dir")
    data_dir = runtime.env()[variable]
    assert worker_env[variable] == data_dir
    volumes = [v for volume in runtime.all("VOLUME") for v in volume.words()]
    assert volumes == [data_dir]
    # even without the variable, the default ./data resolves into the volume
    workdir = PurePosixPath(runtime.last("WORKDIR").value)
    assert str(workdir / PurePosixPath(_default("data_dir"))) == data_dir
    mounts = [str(m).split(":") for m in worker["volumes"]]
    [volume_name] = [m[0] for m in mounts if m[1] == data_dir]
    assert volume_name in (compose.get("volumes") or {}), "mount a named volume"
    # the directory is the worker's before the VOLUME line snapshots it
    volume_line = runtime.last("VOLUME").line
    chowns = [
        _command_at(words, "chown")
        for run in runtime.all("RUN")
        if run.line < volume_line and "chown" in (words := _shell_words(run, runtime))
    ]
    name, uid, _ = _created_user(runtime)
    assert any(
        data_dir in chown[2:] and chown[1].split(":")[0] in (name, uid) for chown in chowns
    ), "chown the data dir to the worker's user before declaring the VOLUME"


def test_dockerfile_sets_only_variables_clara_voice_reads(runtime: Stage) -> None:
    ours = {n for n in runtime.env() if n.startswith(("CLARA_", "LIVEKIT_"))}
    assert ours <= CLARA_VARIABLES, sorted(ours - CLARA_VARIABLES)


# -- build context -------------------------------------------------------------------------


def _dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [p.strip().strip("/") for p in lines if p.strip() and not p.startswith("#")]


def _is_ignored(path: str, patterns: list[str]) -> bool:
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)
        if hit:
            ignored = not negated
    return ignored


@pytest.mark.parametrize("path", [".env", ".env.local", ".git", ".venv", "data", "tests"])
def test_dockerignore_keeps_secrets_and_local_state_out(path: str) -> None:
    assert _is_ignored(path, _dockerignore_patterns())


def test_requirements_lock_installs_from_the_build_context_alone() -> None:
    assert LOCK_FILE.is_file(), "docker/Dockerfile installs requirements.lock"
    local = re.compile(r"^(?:/|\.|~|file:)")
    for number, line in enumerate(LOCK_FILE.read_text(encoding="utf-8").splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        option, _, inline = words[0].partition("=")
        argument = inline or (words[1] if len(words) > 1 else "")
        where = f"requirements.lock:{number}: {line.strip()}"
        # only requirements.lock is copied into the build: no other files, no local
        # indexes or wheel directories of the machine that compiled it
        assert option not in ("-r", "--requirement", "-c", "--constraint"), where
        assert option not in ("-e", "--editable"), where
        if option in ("-f", "--find-links", "-i", "--index-url", "--extra-index-url"):
            assert not local.match(argument), where
        assert "@ file:" not in line, where
