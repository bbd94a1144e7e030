"""``python -m clara_voice`` as a first-time user types it: the usage and every command's
help come with no settings, no key and no server; a wrong command line is one line and
exit 2; settings are checked only by the commands that use them.

Defect (issue 19): ``python -m clara_voice``, ``--help`` and ``start --help`` printed only
three lines demanding DEEPGRAM_API_KEY and OPENAI_API_KEY, and ``web --help`` said the
command takes no arguments.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clara_voice._cli import COMMANDS, LIVEKIT_COMMANDS, OWN_COMMANDS
from clara_voice._livekit_worker import cli_commands
from testkit.worker import SRC, run_clara

BROKEN = {"CLARA_HEALTH_CHECK_INTERVAL": "soon"}
"""A setting that stops every command that reads the settings."""


@pytest.mark.parametrize("args", [[], ["-h"], ["--help"]])
def test_the_usage_lists_every_command_and_where_settings_come_from(
    tmp_path: Path, args: list[str]
) -> None:
    result = run_clara(tmp_path, args, **BROKEN)  # and no provider key
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == "usage: python -m clara_voice <command> [options]"
    for command, what in COMMANDS.items():
        assert [line for line in lines if line.split()[:1] == [command]] == [
            f"  {command:<16}{what}"
        ]
    text = " ".join(result.stdout.split())
    for source in ("environment", ".env file", ".env.example", "README's configuration table"):
        assert source in text
    assert "python -m clara_voice <command> --help" in text


def test_the_usage_names_every_command_livekits_cli_has() -> None:
    assert sorted(LIVEKIT_COMMANDS) == cli_commands()
    assert set(COMMANDS) == {*LIVEKIT_COMMANDS, *OWN_COMMANDS}


def test_the_usage_loads_neither_the_settings_nor_livekit() -> None:
    code = (
        "import sys; sys.argv = ['clara_voice', '--help']\n"
        "from clara_voice.__main__ import main\n"
        "assert main() == 0\n"
        "print(sorted(m for m in sys.modules if m.startswith(('livekit', 'pydantic'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    ("command", "shows"),
    [
        ("start", "--log-level"),
        ("dev", "--log-level"),
        ("console", "--text"),
        ("connect", "--room"),
        ("download-files", "Usage: python -m clara_voice download-files"),
        ("web", "CLARA_WEB_PORT"),
        ("outbox", "dead-letters"),
        ("demo", "CLARA_DEMO_RTC_PORT"),
        ("start -h", "--log-level"),
        ("web -h", "CLARA_WEB_PORT"),
    ],
)
def test_each_command_has_its_help_without_settings_or_keys(
    tmp_path: Path, command: str, shows: str
) -> None:
    args = command.split() if " " in command else [command, "--help"]
    result = run_clara(tmp_path, args, **BROKEN)
    assert result.returncode == 0, result.stderr
    assert shows in result.stdout
    assert "missing setting" not in result.stdout + result.stderr
    assert "invalid setting" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["talk"], "clara_voice: unknown command 'talk': the commands are demo, start, "),
        (
            ["--verbose"],
            "clara_voice: unknown option --verbose (see `python -m clara_voice --help`)",
        ),
        (["start", "--verbose"], "clara_voice: start: No such option: --verbose (see "),
        (["connect"], "clara_voice: connect: Missing option '--room' (see "),
        (["web", "--port", "80"], "clara_voice: web: unrecognized arguments: --port 80 (see "),
        (["demo", "now"], "clara_voice: demo: unrecognized arguments: now (see "),
        (["outbox", "purge"], "clara_voice: outbox: argument command: invalid choice: 'purge'"),
    ],
)
def test_a_wrong_command_line_is_one_line_and_exit_2_before_settings(
    tmp_path: Path, args: list[str], says: str
) -> None:
    result = run_clara(tmp_path, args, **BROKEN)  # the command line is wrong first
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(says), result.stderr


def test_the_version(tmp_path: Path) -> None:
    result = run_clara(tmp_path, ["--version"], **BROKEN)
    assert (result.returncode, result.stdout) == (0, "clara_voice 0.1.0\n")


def test_commands_that_use_settings_check_them_and_only_clara_itself_needs_keys(
    tmp_path: Path,
) -> None:
    # a command that reads the settings stops on a bad one, naming it
    result = run_clara(tmp_path, ["outbox", "status"], **BROKEN)
    assert result.returncode == 2
    assert result.stderr.startswith("clara_voice: invalid setting CLARA_HEALTH_CHECK_INTERVAL=")
    # the outbox needs no provider key; the worker does
    assert run_clara(tmp_path, ["outbox", "status"]).returncode == 0
    result = run_clara(tmp_path, ["start"])
    assert result.returncode == 2
    assert "missing setting DEEPGRAM_API_KEY" in result.stderr
