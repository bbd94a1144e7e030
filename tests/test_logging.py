"""Logging: every record, ours and livekit's, rendered by structlog with its context."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
from livekit.agents import JobContext
from livekit.agents.cli.log import setup_logging

from clara_voice.config import Settings, load_settings
from clara_voice.logging import (
    LEVELLED_LOGGERS,
    build_formatter,
    configure_logging,
    get_logger,
)
from clara_voice.worker import entrypoint
from testkit.fakes import FakeRoom, fake_factory
from testkit.tasks import settle


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def render(record: logging.LogRecord, fmt: str = "json") -> str:
    return build_formatter(fmt).format(record)  # type: ignore[arg-type]


def make_record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("clara_voice.agent", logging.INFO, __file__, 1, msg, None, None)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_event_level_logger_time_and_context() -> None:
    line = render(make_record("session initialized", participant="alice", session_id="s1"))
    data = json.loads(line)
    assert data["event"] == "session initialized"
    assert data["level"] == "info"
    assert data["logger"] == "clara_voice.agent"
    assert data["participant"] == "alice"
    assert data["session_id"] == "s1"
    assert data["timestamp"].endswith("Z")


def test_secrets_in_context_are_redacted() -> None:
    data = json.loads(render(make_record("connecting", token="eyJhbGciOi", url="ws://x")))
    assert data["token"] == "**********"
    assert data["url"] == "ws://x"


def test_tracebacks_forwarded_from_job_processes_are_kept() -> None:
    record = make_record("unhandled exception while running the job task")
    record.exc_text = "Traceback (most recent call last):\n  ...\nValueError: boom"
    assert "ValueError: boom" in json.loads(render(record))["exception"]


def test_objects_in_context_do_not_break_the_line() -> None:
    data = json.loads(render(make_record("failed", error=ValueError("bad frame"))))
    assert data["error"] == "bad frame"


def test_console_format_is_one_readable_line() -> None:
    line = render(make_record("participant joined", participant="alice"), fmt="console")
    assert "participant joined" in line
    assert "participant" in line
    assert "alice" in line
    assert "\n" not in line.strip()


def test_configure_logging_replaces_livekits_handler(restore_root: None) -> None:
    setup_logging("INFO", devmode=False, console=False)  # what livekit's CLI does first
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=stream)
    configure_logging(level="INFO", fmt="json", stream=stream)  # idempotent

    console_handlers = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
    assert len(console_handlers) == 1
    get_logger("clara_voice.test", room="r1").info("hello", extra={"n": 1})
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line) | {"timestamp": None} == {
        "event": "hello",
        "level": "info",
        "logger": "clara_voice.test",
        "room": "r1",
        "n": 1,
        "timestamp": None,
    }
    assert sys.stdout not in [getattr(h, "stream", None) for h in console_handlers]


async def test_every_record_of_a_job_carries_job_id_and_room(
    restore_root: None, job_ctx: JobContext, room: FakeRoom, settings: Settings
) -> None:
    stream = io.StringIO()
    configure_logging(level="DEBUG", fmt="json", stream=stream)
    job_ctx._on_setup()  # livekit's job runner attaches the job's log fields to the handlers
    room.join("alice")

    await entrypoint(job_ctx, settings=settings, pipeline_factory=fake_factory)
    await settle()
    logging.getLogger("livekit.agents").info("a livekit record inside the job")
    for callback in job_ctx._shutdown_callbacks:
        await callback("test over")

    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert records
    for record in records:
        assert record["job_id"] == "AJ_test", record
        assert record["room"] == room.name, record
    joined = next(r for r in records if r["event"] == "session initialized")
    assert joined["participant"] == "alice"
    assert joined["session_id"].startswith("session_")


LIVEKIT_LOGGERS = ("livekit.agents", "livekit.plugins.openai", "livekit.plugins.deepgram")
"""livekit's own logger and the loggers of the provider plugins clara_voice registers."""


@pytest.fixture
def restore_levels() -> Iterator[None]:
    """configure_logging sets livekit's and the plugins' loggers: put their levels back."""
    levels = {name: logging.getLogger(name).level for name in {*LEVELLED_LOGGERS, *LIVEKIT_LOGGERS}}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize(
    ("livekit_cli_level", "clara_log_level", "rendered_levels"),
    [("INFO", "DEBUG", {"debug", "info"}), ("DEBUG", "INFO", {"info"})],
    ids=["debug-lowers-livekit", "info-raises-livekit"],
)
def test_clara_log_level_is_the_level_of_livekits_own_loggers(
    monkeypatch: pytest.MonkeyPatch,
    restore_root: None,
    restore_levels: None,
    livekit_cli_level: str,
    clara_log_level: str,
    rendered_levels: set[str],
) -> None:
    """issue 11: CLARA_LOG_LEVEL is livekit's level too, whatever livekit's CLI set on its
    loggers first: with DEBUG, the debug records of livekit.agents and of the provider
    plugins (livekit.plugins.openai, livekit.plugins.deepgram) are rendered; with INFO
    they are not."""
    for name in LIVEKIT_LOGGERS:  # livekit's CLI sets its --log-level before our code runs
        logging.getLogger(name).setLevel(livekit_cli_level)
    monkeypatch.setenv("CLARA_LOG_LEVEL", clara_log_level)
    stream = io.StringIO()
    configure_logging(level=load_settings().log_level, fmt="json", stream=stream)

    for name in LIVEKIT_LOGGERS:
        logging.getLogger(name).debug("debug of %s", name)
        logging.getLogger(name).info("info of %s", name)

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert {(line["logger"], line["level"], line["event"]) for line in lines} == {
        (name, level, f"{level} of {name}") for name in LIVEKIT_LOGGERS for level in rendered_levels
    }
