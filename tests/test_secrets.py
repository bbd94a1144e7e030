"""No secret a setting carries ever shows in a line the service writes (issue 11, item 4).

Every secret-bearing setting is given a value whose secret parts are distinct markers, then
pushed through each error path a user meets (URL settings refuse credentials and queries at
start, so markers inside URLs only meet that one): a bad value of that setting, a bad value of
another one beside it, a fallback list that is not JSON or has a wrong field, a LiveKit
server that cannot be reached or refuses the credentials, a backend and providers that refuse
them, and the outbox CLI. Everything written (stdout, stderr, every log line) is grepped for
each marker.

Defect: ``invalid setting LIVEKIT_URL='https://user:pass@host/…'`` printed the URL whole,
and only settings whose names held "key" or "secret" were hidden.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from clara_voice import _cli, db_cli, outbox_cli
from clara_voice.config import Settings, load_settings
from clara_voice.logging import build_formatter
from clara_voice.persistence.factory import build_backend
from clara_voice.persistence.outbox import Outbox
from testkit.fakes import FakeRoom
from testkit.loopback_backend import LoopbackBackend
from testkit.loopback_livekit import LoopbackLiveKit
from testkit.loopback_providers import LoopbackDeepgram, LoopbackOpenAI
from testkit.pipeline import TURN_TIMEOUT, running_harness, until
from testkit.postgres import PostgresServer
from testkit.worker import (
    DRAIN_BOUND,
    STARTUP_TIMEOUT,
    free_port,
    run_clara,
    running_worker,
    worker_env,
)
from tests.persistence.outbox_writer_proc import turn
from tests.test_outbox_cli import leave_dead_letters

# each marker is the secret part of one setting; none may ever be written
LIVEKIT_PASSWORD = "lk-url-password-7QX"
LIVEKIT_QUERY = "lk-url-query-token-8RY"
LIVEKIT_KEY = "lk-api-key-9SZ"
LIVEKIT_SECRET = "lk-api-secret-0TA"
BACKEND_TOKEN = "backend-token-1UB"
OPENAI_KEY = "openai-key-2VC"
DEEPGRAM_KEY = "deepgram-key-3WD"
STT_KEY, LLM_KEY, TTS_KEY = "stt-key-4XE", "llm-key-5YF", "tts-key-6ZG"
STT_PASSWORD, LLM_PASSWORD, TTS_PASSWORD = "stt-pass-7AH", "llm-pass-8BI", "tts-pass-9CJ"
PROVIDER_QUERY = "provider-query-0DK"
FALLBACK_KEY, FALLBACK_PASSWORD = "fallback-key-1EL", "fallback-pass-2FM"
TYPO_SECRET = "typo-field-secret-3GN"
DB_PASSWORD, DB_QUERY = "db-url-password-4HP", "db-url-query-5IQ"

MARKERS = [
    *(LIVEKIT_PASSWORD, LIVEKIT_QUERY, LIVEKIT_KEY, LIVEKIT_SECRET, BACKEND_TOKEN),
    *(OPENAI_KEY, DEEPGRAM_KEY, STT_KEY, LLM_KEY, TTS_KEY),
    *(STT_PASSWORD, LLM_PASSWORD, TTS_PASSWORD, PROVIDER_QUERY),
    *(FALLBACK_KEY, FALLBACK_PASSWORD, TYPO_SECRET, DB_PASSWORD, DB_QUERY),
]


def assert_no_marker(output: str) -> None:
    leaked = [line for line in output.splitlines() if any(m in line for m in MARKERS)]
    assert not leaked, "secrets written:\n" + "\n".join(line[:400] for line in leaked[:5])


def secret_env(port: int) -> dict[str, str]:
    """Every secret-bearing setting, valid, pointing at loopback port ``port``."""
    fallback = [{"base_url": f"http://127.0.0.1:{port}/v1"}]
    return {
        "LIVEKIT_API_KEY": LIVEKIT_KEY,
        "LIVEKIT_API_SECRET": LIVEKIT_SECRET,
        "OPENAI_API_KEY": OPENAI_KEY,
        "DEEPGRAM_API_KEY": DEEPGRAM_KEY,
        "CLARA_BACKEND": "http",
        "CLARA_BACKEND_URL": f"http://127.0.0.1:{port}/api",
        "CLARA_BACKEND_TOKEN": BACKEND_TOKEN,
        "CLARA_STT_API_KEY": STT_KEY,
        "CLARA_LLM_API_KEY": LLM_KEY,
        "CLARA_TTS_API_KEY": TTS_KEY,
        "CLARA_STT_BASE_URL": f"http://127.0.0.1:{port}/v1/listen",
        "CLARA_LLM_BASE_URL": f"http://127.0.0.1:{port}/v1",
        "CLARA_TTS_BASE_URL": f"http://127.0.0.1:{port}/v1",
        "CLARA_LLM_FALLBACKS": json.dumps([{**fallback[0], "api_key": FALLBACK_KEY}]),
        "CLARA_TTS_FALLBACKS": json.dumps(fallback),
    }


# -- settings: every way a value is refused --------------------------------------------------

BAD_VALUES = {
    "a LiveKit URL of the wrong scheme": {
        "LIVEKIT_URL": f"ftp://clara:{LIVEKIT_PASSWORD}@lk.example/?access_token={LIVEKIT_QUERY}"
    },
    "a LiveKit URL without a scheme": {
        "LIVEKIT_URL": f"clara:{LIVEKIT_PASSWORD}@lk.example:7880/?token={LIVEKIT_QUERY}"
    },
    "a LiveKit URL with credentials in it": {
        "LIVEKIT_URL": f"wss://clara:{LIVEKIT_PASSWORD}@lk.example/?access_token={LIVEKIT_QUERY}"
    },
    "a backend URL with credentials in it": {
        "CLARA_BACKEND": "http",
        "CLARA_BACKEND_URL": f"https://clara:{LIVEKIT_PASSWORD}@api.example/v1?k={LIVEKIT_QUERY}",
    },
    "a token over plain http to another host": {
        "CLARA_BACKEND": "http",
        "CLARA_BACKEND_URL": "http://api.example/v1",
        "CLARA_BACKEND_TOKEN": BACKEND_TOKEN,
    },
    "provider URLs of the wrong scheme": {
        f"CLARA_{kind}_BASE_URL": f"ws://clara:{password}@local/v1?key={PROVIDER_QUERY}"
        for kind, password in (("STT", STT_PASSWORD), ("LLM", LLM_PASSWORD), ("TTS", TTS_PASSWORD))
    },
    "provider URLs with credentials in them": {
        f"CLARA_{kind}_BASE_URL": f"https://clara:{password}@local/v1?key={PROVIDER_QUERY}"
        for kind, password in (("STT", STT_PASSWORD), ("LLM", LLM_PASSWORD), ("TTS", TTS_PASSWORD))
    },
    "fallbacks that are not JSON": {
        "CLARA_LLM_FALLBACKS": f'[{{"api_key": "{FALLBACK_KEY}", "base_url": "http://x',
    },
    "fallbacks with a bad URL and a misspelt field": {
        "CLARA_TTS_FALLBACKS": json.dumps(
            [{"base_url": f"ftp://c:{FALLBACK_PASSWORD}@h/", "token": TYPO_SECRET}]
        ),
        "CLARA_STT_FALLBACKS": json.dumps([{"provider": "openai", "apikey": FALLBACK_KEY}]),
    },
    "an empty LiveKit secret beside every other secret": {"LIVEKIT_API_SECRET": ""},
    "a database URL of the wrong scheme": {
        "CLARA_BACKEND": "postgres",
        "CLARA_DATABASE_URL": f"mysql://clara:{DB_PASSWORD}@db.example/c?sslpassword={DB_QUERY}",
    },
    "a database URL without a database, its password holding URL characters": {
        "CLARA_BACKEND": "postgres",
        "CLARA_DATABASE_URL": f"postgresql://clara:{DB_PASSWORD}/@#x@db.example?k={DB_QUERY}",
    },
}


@pytest.mark.parametrize("bad", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
def test_a_refused_setting_never_shows_a_secret(tmp_path: Path, bad: dict[str, str]) -> None:
    result = run_clara(tmp_path, ["start"], **{**secret_env(free_port()), **bad})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("clara_voice: invalid setting") for line in lines)
    for variable in bad:
        if variable != "CLARA_BACKEND":
            assert variable in result.stderr  # the line still says which variable is wrong
    assert "Traceback" not in result.stderr
    assert_no_marker(result.stdout + result.stderr)


# -- the worker: LiveKit out of reach, or refusing the credentials ---------------------------


def secret_worker_env(url: str, *, max_retry: int) -> dict[str, str]:
    """The worker's environment with every secret set, debug logs, and LiveKit at ``url``."""
    env = worker_env(
        url=url,
        api_secret=LIVEKIT_SECRET,
        http_port=free_port(),
        CLARA_LIVEKIT_MAX_RETRY=str(max_retry),
        CLARA_LOG_LEVEL="DEBUG",
    )
    return env | {k: v for k, v in secret_env(free_port()).items() if k != "LIVEKIT_API_SECRET"}


async def test_an_unreachable_livekit_server_never_shows_a_secret(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = secret_worker_env(f"ws://127.0.0.1:{port}", max_retry=1)
    async with running_worker(env, tmp_path) as worker:
        await worker.wait_line(
            lambda line: line["level"] == "critical" and line["event"].startswith("giving up"),
            "giving up",
            timeout=STARTUP_TIMEOUT,
        )
        assert await worker.wait_exit(DRAIN_BOUND) == 1
        output = worker.all_output()
    assert f"127.0.0.1:{port}" in output  # the line says where it tried
    assert_no_marker(output)


async def test_refused_livekit_credentials_never_show_a_secret(tmp_path: Path) -> None:
    async with LoopbackLiveKit(api_key="another-key", api_secret="another-secret") as peer:
        env = secret_worker_env(peer.url, max_retry=0)
        async with running_worker(env, tmp_path) as worker:
            await worker.wait_line(
                lambda line: line["level"] == "critical" and "LIVEKIT_API_KEY" in line["event"],
                "giving up, naming the key variables",
                timeout=STARTUP_TIMEOUT,
            )
            assert await worker.wait_exit(DRAIN_BOUND) == 1
            assert peer.auth_rejections
            output = worker.all_output()
    assert_no_marker(output)


# -- a job: the backend and every provider refuse the credentials ----------------------------


@pytest.fixture
def rendered() -> Iterator[io.StringIO]:
    """Every log record of this process, rendered as the worker renders them (JSON)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(build_formatter("json"))
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", "livekit", "clara_voice")}
    root.addHandler(handler)
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


async def test_refused_backend_and_provider_credentials_never_show_a_secret(
    tmp_path: Path, rendered: io.StringIO
) -> None:
    def secret_settings(openai: LoopbackOpenAI, deepgram: LoopbackDeepgram) -> dict[str, object]:
        return {
            "backend": "http",
            "backend_url": backend.base_url,
            "backend_token": BACKEND_TOKEN,
            "stt_provider": "deepgram",
            "stt_base_url": deepgram.base_url,
            "stt_api_key": STT_KEY,
            "llm_base_url": openai.base_url,
            "llm_api_key": LLM_KEY,
            "tts_base_url": openai.base_url,
            "tts_api_key": TTS_KEY,
            "openai_api_key": OPENAI_KEY,
            "deepgram_api_key": DEEPGRAM_KEY,
        }

    async with (
        LoopbackBackend(token="the-backends-own-token") as backend,
        running_harness(
            FakeRoom(),
            tmp_path / "data",
            provider_key="the-providers-own-key",
            settings_for=secret_settings,
            persist=True,
        ) as harness,
    ):
        await harness.join("carol", "text")
        await harness.join("alice", "voice-vad")
        harness.room.send_text("carol", "Are you there?")
        reply = await harness.media["carol"].text.next_reply(timeout=TURN_TIMEOUT)
        assert reply == harness.settings.apology  # the LLM refused the key
        harness.speak("alice", "Hello there, can you hear me?")
        await until(
            lambda: harness.deepgram.connections and harness.openai.requests,
            timeout=TURN_TIMEOUT,
            what="both providers asked",
        )
        await until(
            lambda: "CLARA_BACKEND_TOKEN" in rendered.getvalue(),
            timeout=TURN_TIMEOUT,
            what="the backend's refusal said",
        )
    output = rendered.getvalue()
    assert "401" in output
    assert_no_marker(output)


# -- the PostgreSQL store: a server refusing the password, one out of reach -----------------


async def test_a_database_refusing_or_out_of_reach_never_shows_a_secret(
    tmp_path: Path,
    rendered: io.StringIO,
    capsys: pytest.CaptureFixture[str],
    postgres_server: PostgresServer,
) -> None:
    """The worker's outbox delivering to it, and the operator's commands (``db status``,
    ``db migrate``, ``outbox replay``), with a URL whose password and query are markers."""
    data = tmp_path / "data"
    await leave_dead_letters(data)
    refusing = postgres_server.dsn("postgres", password=DB_PASSWORD) + f"?sslpassword={DB_QUERY}"
    unreachable = f"postgresql://clara:{DB_PASSWORD}@127.0.0.1:{free_port()}/clara?k={DB_QUERY}"
    for url, error in ((refusing, "28P01"), (unreachable, "out of reach")):
        settings = load_settings(
            data_dir=data, backend="postgres", database_url=url, backend_timeout=2
        )
        await deliver_one_turn(settings, tmp_path / "worker")
        for command, main, parser in (
            ("status", db_cli.main, _cli.db_parser),
            ("migrate", db_cli.main, _cli.db_parser),
            ("replay", outbox_cli.main, _cli.outbox_parser),
        ):
            assert await asyncio.to_thread(main, parser().parse_args([command]), settings) == 1
        printed = capsys.readouterr()
        assert error in printed.err and error in rendered.getvalue()
        assert_no_marker(printed.out + printed.err)
    assert_no_marker(rendered.getvalue())


async def deliver_one_turn(settings: Settings, data: Path) -> None:
    """A worker's outbox delivering a turn to the settings' store, until it says the store
    refused it."""
    backend = build_backend(settings)
    async with Outbox(data, backend, retry_base=0.01, flush_timeout=0) as outbox:
        await outbox.put(turn("s9", 0))
        await until(lambda: not outbox.stats.backend_up, timeout=10, what="the refusal")
    await backend.aclose()


# -- the outbox CLI ----------------------------------------------------------------------------


async def test_the_outbox_cli_never_shows_a_secret(tmp_path: Path) -> None:
    async with LoopbackBackend(token="the-backends-own-token") as backend:
        env = {**secret_env(free_port()), "CLARA_BACKEND_URL": backend.base_url}
        data = tmp_path / "data"
        for args in (["status"], ["dead-letters"], ["replay"], ["replay", "missing-key"]):
            result = run_clara(tmp_path, ["outbox", *args], CLARA_DATA_DIR=str(data), **env)
            assert "Traceback" not in result.stderr
            assert_no_marker(result.stdout + result.stderr)
