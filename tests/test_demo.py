"""``python -m clara_voice demo`` before it starts anything (each problem in one line,
exit 2, nothing started), what it would start (everything on 127.0.0.1), and how it
runs and stops its children: Ctrl-C ends all of them, a child that dies is named and the
others are stopped. The real thing, in a browser: ``tests/e2e/test_demo.py``."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from clara_voice import demo
from clara_voice._livekit_server import ServerBinaryError, find_server_binary, server_config
from clara_voice._supervisor import ChildSpec
from clara_voice.config import load_settings
from testkit.livekit_server import free_port
from testkit.processes import process_tree, running
from testkit.worker import run_clara
from tests.test_supervisor import spec as fake_child

KEYLESS = {
    "CLARA_STT_PROVIDER": "openai",
    "CLARA_STT_BASE_URL": "http://localhost:8000/v1",
    "CLARA_LLM_BASE_URL": "http://localhost:11434/v1",
    "CLARA_TTS_BASE_URL": "http://localhost:8880/v1",
}


@pytest.fixture
def ready_env(tmp_path: Path) -> dict[str, str]:
    """Settings under which only the providers' keys are missing: a server binary, a
    built page, free ports."""
    binary = tmp_path / "livekit-server"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<!doctype html><title>Clara</title>")
    return {
        "LIVEKIT_SERVER_BIN": str(binary),
        "CLARA_WEB_DIST": str(dist),
        "LIVEKIT_URL": f"ws://localhost:{free_port()}",
        "CLARA_DEMO_RTC_PORT": str(free_port(socket.SOCK_DGRAM)),
        "CLARA_HTTP_PORT": str(free_port()),
        "CLARA_WEB_PORT": str(free_port()),
        "CLARA_PROMETHEUS_PORT": str(free_port()),
    }


def test_without_keys_it_names_each_missing_key_and_the_keyless_route_and_starts_nothing(
    tmp_path: Path, ready_env: dict[str, str]
) -> None:
    result = run_clara(tmp_path, ["demo"], **ready_env)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines  # one per missing key
    deepgram, openai = lines
    assert deepgram.startswith(
        "clara_voice: missing setting DEEPGRAM_API_KEY: CLARA_STT_PROVIDER=deepgram needs it."
    )
    assert "CLARA_STT_PROVIDER=openai CLARA_STT_BASE_URL=http://localhost:8000/v1" in deepgram
    assert openai.startswith(
        "clara_voice: missing setting OPENAI_API_KEY: the OpenAI LLM and the OpenAI TTS need it."
    )
    assert "CLARA_LLM_BASE_URL=http://localhost:11434/v1" in openai
    assert "CLARA_TTS_BASE_URL=http://localhost:8880/v1" in openai
    assert not (tmp_path / "data").exists()  # no log folder: nothing was started


def test_a_key_that_is_partly_replaced_is_asked_for_what_still_needs_it(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path, llm_base_url="http://localhost:11434/v1", deepgram_api_key="k"
    )
    assert demo.key_problems(settings) == [
        "missing setting OPENAI_API_KEY: the OpenAI TTS needs it. Put it in .env, or go "
        "without keys through local OpenAI-compatible servers: "
        "CLARA_TTS_BASE_URL=http://localhost:8880/v1 (e.g. a Kokoro server)"
    ]
    keyless = load_settings(data_dir=tmp_path, **{k.lower()[6:]: v for k, v in KEYLESS.items()})
    assert demo.key_problems(keyless) == []


def test_every_other_problem_is_one_line_naming_what_to_set(
    tmp_path: Path, ready_env: dict[str, str]
) -> None:
    busy_tcp = socket.socket()
    busy_tcp.bind(("127.0.0.1", 0))
    busy_tcp.listen()
    busy_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy_udp.bind(("127.0.0.1", 0))
    web, rtc = busy_tcp.getsockname()[1], busy_udp.getsockname()[1]
    with busy_tcp, busy_udp:
        env = {
            **ready_env,
            **KEYLESS,
            "LIVEKIT_SERVER_BIN": str(tmp_path / "nowhere" / "livekit-server"),
            "CLARA_WEB_DIST": str(tmp_path / "unbuilt"),
            "CLARA_WEB_PORT": str(web),
            "CLARA_DEMO_RTC_PORT": str(rtc),
            "CLARA_PROMETHEUS_PORT": ready_env["CLARA_HTTP_PORT"],
        }
        result = run_clara(tmp_path, ["demo"], **env)
    assert result.returncode == 2
    problems = [line.removeprefix("clara_voice: ") for line in result.stderr.splitlines()]
    assert problems == [
        f"no livekit-server at {tmp_path}/nowhere/livekit-server: run `make livekit-server` "
        "(builds it with Go) or set LIVEKIT_SERVER_BIN to one",
        f"the web page is not built ({tmp_path}/unbuilt/index.html is missing): run `make web` "
        "(or `npm ci && npm run build` in web/), or set CLARA_WEB_DIST",
        f"port {rtc} (UDP) on 127.0.0.1 is in use: set CLARA_DEMO_RTC_PORT to a free port",
        f"port {web} (TCP) on 127.0.0.1 is in use: set CLARA_WEB_PORT to a free port",
        "CLARA_PROMETHEUS_PORT and CLARA_HTTP_PORT are both port "
        f"{ready_env['CLARA_HTTP_PORT']}: set one to another",
    ]
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("url", ["wss://clara.livekit.cloud", "ws://10.0.0.5:7880"])
def test_a_livekit_url_elsewhere_is_refused(
    tmp_path: Path, ready_env: dict[str, str], url: str
) -> None:
    result = run_clara(tmp_path, ["demo"], **{**ready_env, **KEYLESS, "LIVEKIT_URL": url})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"clara_voice: LIVEKIT_URL={url} is not a ws:// address on this machine: the demo runs "
        "its own LiveKit server there; unset LIVEKIT_URL (or set it to ws://localhost:<port>), "
        "or run `python -m clara_voice start` against that server"
    ]


def test_everything_it_starts_serves_on_loopback_whatever_the_settings_say(
    tmp_path: Path, ready_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {**ready_env, **KEYLESS}.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(
        data_dir=tmp_path / "data",
        http_host="0.0.0.0",
        web_host="0.0.0.0",
        web_allow_remote=True,
        web_livekit_url="ws://192.0.2.7:7880",
        livekit_api_secret="a-secret-long-enough-for-the-demo-0123",
    )
    plan = demo.plan(settings, cwd=tmp_path)
    port = ready_env["LIVEKIT_URL"].rsplit(":", 1)[1]
    assert plan.livekit_url == f"ws://127.0.0.1:{port}"
    assert plan.page_url == f"http://127.0.0.1:{ready_env['CLARA_WEB_PORT']}/"
    assert plan.worker.argv[-2:] == ("dev", "--no-reload")
    assert plan.worker.env["CLARA_HTTP_HOST"] == "127.0.0.1"
    assert plan.page.env["CLARA_WEB_HOST"] == "127.0.0.1"
    assert plan.page.env["CLARA_WEB_ALLOW_REMOTE"] == "false"
    assert plan.page.env["CLARA_WEB_LIVEKIT_URL"] == plan.livekit_url
    for child in (plan.worker, plan.page):
        assert child.env["LIVEKIT_URL"] == plan.livekit_url
    # the server's configuration (with its secret) is in its environment only
    assert plan.server.argv == (ready_env["LIVEKIT_SERVER_BIN"],)
    config = plan.server.env["LIVEKIT_CONFIG"]
    assert "a-secret-long-enough-for-the-demo-0123" in config
    assert 'bind_addresses: ["127.0.0.1"]' in config
    assert "tcp_port: 0" in config  # livekit-server binds ICE over TCP on every interface
    assert 'includes: ["127.0.0.0/8"]' in config  # its UDP port on loopback addresses only
    assert plan.log_dir == tmp_path / "data" / "demo"


def test_the_server_binary_is_the_configured_one_else_the_builds_else_the_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
        return path

    configured = executable(tmp_path / "mine" / "livekit-server")
    built = executable(tmp_path / "repo" / ".cache" / "livekit-server")
    executable(tmp_path / "repo" / "scripts" / "livekit-server", f"#!/bin/sh\necho {built}\n")
    on_path = executable(tmp_path / "bin" / "livekit-server")
    monkeypatch.setenv("PATH", f"{on_path.parent}:/usr/bin:/bin")

    assert find_server_binary(configured, tmp_path / "repo") == configured
    assert find_server_binary(None, tmp_path / "repo") == built
    assert find_server_binary(None, tmp_path / "elsewhere") == on_path
    monkeypatch.setenv("PATH", "/nowhere")
    with pytest.raises(ServerBinaryError, match=r"^no livekit-server on the PATH: run `make"):
        find_server_binary(None, tmp_path / "elsewhere")


def test_the_server_configuration_is_loopback_only_and_keeps_any_key() -> None:
    key, secret = "key: with # yaml", "'secret' with: \"quotes\" # and more"
    config = yaml.safe_load(server_config(port=7880, api_key=key, api_secret=secret, rtc_udp=7882))
    assert config["keys"] == {key: secret}
    assert config["bind_addresses"] == ["127.0.0.1"]
    assert config["rtc"]["tcp_port"] == 0
    assert config["rtc"]["ips"] == {"includes": ["127.0.0.0/8"]}
    assert config["rtc"]["node_ip"] == "127.0.0.1"
    with_tcp = server_config(port=7880, api_key="k", api_secret="s", rtc_udp=7882, rtc_tcp=7881)
    assert yaml.safe_load(with_tcp)["rtc"]["tcp_port"] == 7881  # the tests' server
    assert "redis" not in config
    node = server_config(port=7880, api_key="k", api_secret="s", rtc_udp=1, redis="127.0.0.1:6379")
    assert yaml.safe_load(node)["redis"] == {"address": "127.0.0.1:6379"}  # a fleet's node


def fake_plan(tmp_path: Path, *, page: tuple[str, ...] = ()) -> demo.DemoPlan:
    def child(name: str, *flags: str) -> ChildSpec:
        return replace(fake_child(tmp_path, name, *flags), name=f"the {name}")

    return demo.DemoPlan(
        server=child("LiveKit server"),
        worker=child("worker", "leave"),
        page=child("page", *page),
        livekit_url="ws://127.0.0.1:7880",
        page_url="http://127.0.0.1:3000/",
        log_dir=tmp_path / "logs",
    )


async def test_ctrl_c_stops_every_child_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    said: list[str] = []
    ready = asyncio.Event()
    tree: list[int] = []
    before = set(process_tree(os.getpid()))  # the session's servers too (PostgreSQL)

    def say(line: str = "") -> None:
        said.append(line)
        if line.startswith("  Talk to Clara: open http://127.0.0.1:3000/"):
            tree.extend(pid for pid in process_tree(os.getpid()) if pid not in before)
            ready.set()

    monkeypatch.setattr(demo, "say", say)
    running_demo = asyncio.create_task(demo.run(fake_plan(tmp_path), cwd=tmp_path))
    await asyncio.wait_for(ready.wait(), 60)
    assert len(tree) == 4  # the three children, and what the worker started
    os.kill(os.getpid(), signal.SIGINT)
    assert await asyncio.wait_for(running_demo, 60) == 0
    assert said[-1] == "clara_voice demo: stopped"
    assert [pid for pid in tree if running(pid)] == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


async def test_a_child_that_dies_is_named_and_the_others_are_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "say", lambda line="": None)
    before = set(process_tree(os.getpid()))
    code = await asyncio.wait_for(demo.run(fake_plan(tmp_path, page=("exit=3",)), cwd=tmp_path), 60)
    assert code == 1
    errors = capsys.readouterr().err.splitlines()
    assert errors[0] == (
        "clara_voice: the page exited with code 3 before it was ready; "
        f"its last lines ({tmp_path}/logs/page.log):"
    )
    assert errors[1:] == ["  giving up"]
    assert set(process_tree(os.getpid())) == before
