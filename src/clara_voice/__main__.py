"""``python -m clara_voice <command>``: the commands of :mod:`clara_voice._cli`.

The command line is understood before anything else is read: no command, ``-h`` or
``--help`` print the usage (every command, and where settings come from) and exit 0;
``<command> --help`` prints that command's help (livekit's own for its commands); an
unknown command or option is one line on stderr and exit 2. None of these needs settings,
keys or a server.

Then the settings are read and checked, by the commands that use them: a bad value, or a
selected cloud provider without its key for the commands that run Clara, prints one line
per variable and exits 2 before anything registers with LiveKit. livekit's CLI runs
``start``, ``dev``, ``console``, ``connect`` and ``download-files`` over a ClaraWorker;
``outbox`` is the operator's look at the outbox (:mod:`clara_voice.outbox_cli`), ``web``
serves the page (:mod:`clara_voice.web`), ``demo`` runs a LiveKit server, the worker and
the page on this machine (:mod:`clara_voice.demo`).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import TYPE_CHECKING

from clara_voice import __version__
from clara_voice._cli import (
    COMMANDS,
    HELP_FLAGS,
    LIVEKIT_COMMANDS,
    PARSERS,
    PROG,
    CommandLineError,
    usage,
)

if TYPE_CHECKING:
    from clara_voice.config import Settings

PROVIDER_COMMANDS = {"start", "dev", "console", "connect"}
"""The commands that run Clara's pipeline, so need its providers' keys."""


def check_providers(settings: Settings) -> None:
    """Stop at start when a selected cloud provider has no API key."""
    from clara_voice.config import SettingsError
    from clara_voice.voice.providers import missing_keys

    if problems := missing_keys(settings):
        raise SettingsError(problems)


def main() -> int:
    try:
        return _run(sys.argv[1:])
    except CommandLineError as exc:
        print(f"clara_voice: {exc}", file=sys.stderr)
        return 2


def _run(args: list[str]) -> int:
    if not args or args[0] in HELP_FLAGS:
        print(usage())
        return 0
    if args[0] == "--version":
        print(f"clara_voice {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command.startswith("-"):
        raise CommandLineError(f"unknown option {command} (see `{PROG} --help`)")
    if command not in COMMANDS:
        raise CommandLineError(
            f"unknown command {command!r}: the commands are {', '.join(COMMANDS)} "
            f"(see `{PROG} --help`)"
        )
    if command in LIVEKIT_COMMANDS:
        return _livekit_command(command, rest)
    try:
        parsed = PARSERS[command]().parse_args(rest)
    except SystemExit as exc:  # argparse, once it printed the help
        return exc.code if isinstance(exc.code, int) else 0
    return _own_command(command, parsed)


def _settings(command: str) -> Settings | None:
    """The settings, checked for ``command``; None once the problems are printed."""
    from clara_voice.config import SettingsError, load_settings

    try:
        settings = load_settings()
        if command in PROVIDER_COMMANDS:
            check_providers(settings)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"clara_voice: {problem}", file=sys.stderr)
        return None
    return settings


def _own_command(command: str, args: argparse.Namespace) -> int:
    if (settings := _settings(command)) is None:
        return 2
    if command == "outbox":
        from clara_voice.outbox_cli import main as outbox

        return outbox(args, settings)
    if command == "db":
        from clara_voice.db_cli import main as db

        return db(args, settings)
    if command == "web":
        from clara_voice.web import main as web

        return web([], settings)
    from clara_voice.demo import main as demo

    return demo(settings)


def _livekit_command(command: str, args: list[str]) -> int:
    from clara_voice._livekit_worker import CliArgsError, parse_cli_args

    # livekit calls its Python CLI deprecated in favour of the `lk` tool; we keep it because
    # it is what gives `python -m clara_voice start|dev|...` without an extra binary
    warnings.filterwarnings("ignore", "the built-in Python CLI is deprecated")
    try:
        if not parse_cli_args(command, args, prog=PROG):
            return 0  # livekit printed the command's help
    except CliArgsError as exc:
        raise CommandLineError(f"{command}: {exc} (see `{PROG} {command} --help`)") from None
    if (settings := _settings(command)) is None:
        return 2

    from livekit.agents import cli

    from clara_voice.worker import ClaraWorker

    worker = ClaraWorker(settings)
    try:
        cli.run_app(worker)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    else:
        code = 0
    return 1 if worker.gave_up else code


if __name__ == "__main__":
    sys.exit(main())
