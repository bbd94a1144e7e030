"""What can be typed after ``python -m clara_voice``: the commands, the usage, and the
argument parsers of clara_voice's own commands (livekit's commands bring their own).

This module imports nothing but the standard library, so that the usage and every
command's help come without settings, keys, a server, or livekit-agents.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

PROG = "python -m clara_voice"

LIVEKIT_COMMANDS = {
    "start": "run the worker: register with LiveKit (LIVEKIT_URL), take room jobs",
    "dev": "the worker with readable logs and livekit's development defaults",
    "console": "talk to Clara in this terminal (livekit's console, microphone, speakers)",
    "connect": "run Clara in one named room, without dispatch (--room NAME)",
    "download-files": "fetch the model files of livekit's plugins ahead of time",
}
"""livekit's own commands, run by its CLI over clara_voice's worker (each has its help)."""

OWN_COMMANDS = {
    "demo": "run it all on this machine: a LiveKit server, the worker and the page",
    "web": "serve the page to talk to Clara, and its token endpoint (CLARA_WEB_PORT)",
    "outbox": "the outbox for an operator: status, dead-letters, replay",
    "db": "the conversation store's schema: migrate, status",
}
"""clara_voice's own commands."""

COMMANDS = {"demo": OWN_COMMANDS["demo"], **LIVEKIT_COMMANDS, **OWN_COMMANDS}
"""Every command, in the order the usage lists them."""

SETTINGS_HELP = (
    "Settings come from the environment and from a .env file in the working directory (the\n"
    "environment wins); .env.example lists every variable, and the README's configuration\n"
    "table says what each does. Only the commands that use settings read them."
)

HELP_FLAGS = ("-h", "--help")


class CommandLineError(Exception):
    """What was typed is not a command line clara_voice understands (one line)."""


def usage() -> str:
    """The usage ``python -m clara_voice`` and ``--help`` print."""
    width = max(map(len, COMMANDS)) + 2
    commands = "\n".join(f"  {name:<{width}}{what}" for name, what in COMMANDS.items())
    return (
        f"usage: {PROG} <command> [options]\n\n"
        "Clara's real-time voice: a LiveKit Agents worker, and a page to talk to it.\n\n"
        f"commands:\n{commands}\n\n"
        f"options:\n  {'-h, --help':<{width}}show this help and exit\n"
        f"  {'--version':<{width}}print the version and exit\n\n"
        f"`{PROG} <command> --help` shows a command's own options.\n\n"
        f"{SETTINGS_HELP}"
    )


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a wrong command line is one line (:class:`CommandLineError`)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix(PROG).strip()
        raise CommandLineError(f"{command}: {message} (see `{self.prog} --help`)")


def command_parser(command: str, description: str) -> OneLineParser:
    """The parser of one of clara_voice's own commands, its help ending with where its
    settings come from."""
    return OneLineParser(
        prog=f"{PROG} {command}",
        description=description,
        epilog=SETTINGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def web_parser() -> OneLineParser:
    return command_parser(
        "web",
        "Serve the page to talk to Clara (CLARA_WEB_DIST, built by `make web`) and its token\n"
        "endpoint on CLARA_WEB_HOST:CLARA_WEB_PORT (127.0.0.1:3000), for the LiveKit server\n"
        "at CLARA_WEB_LIVEKIT_URL (else LIVEKIT_URL). Takes no arguments: settings only.",
    )


def demo_parser() -> OneLineParser:
    return command_parser(
        "demo",
        "Run Clara on this machine, no Docker needed: a LiveKit server in development mode\n"
        "(the one `make livekit-server` builds, or LIVEKIT_SERVER_BIN), the worker and the\n"
        "page, all on 127.0.0.1. Waits until each is ready, prints the page's address, and\n"
        "stops all three on Ctrl-C. Needs the providers' keys (OPENAI_API_KEY,\n"
        "DEEPGRAM_API_KEY) or local OpenAI-compatible servers (CLARA_LLM_BASE_URL,\n"
        "CLARA_STT_PROVIDER=openai with CLARA_STT_BASE_URL, CLARA_TTS_BASE_URL). Ports:\n"
        "LIVEKIT_URL's (7880), CLARA_DEMO_RTC_PORT (UDP 7882), CLARA_HTTP_PORT (8081),\n"
        "CLARA_PROMETHEUS_PORT (9464), CLARA_WEB_PORT (3000). Logs go to\n"
        "CLARA_DATA_DIR/demo/. Takes no arguments: settings only.",
    )


def outbox_parser() -> OneLineParser:
    parser = command_parser(
        "outbox",
        "The outbox under CLARA_DATA_DIR/outbox, for an operator: what waits, what was\n"
        "dead-lettered, and delivering dead letters again to the configured backend.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    commands.add_parser("status", help="waiting records and dead letters, per file")
    commands.add_parser("dead-letters", help="every dead letter, as JSON lines")
    replaying = commands.add_parser("replay", help="deliver dead letters to the backend")
    replaying.add_argument("keys", nargs="*", help="only these records (default: all)")
    return parser


def db_parser() -> OneLineParser:
    parser = command_parser(
        "db",
        "The conversation store's schema (CLARA_BACKEND: the SQLite file under\n"
        "CLARA_DATA_DIR, or the PostgreSQL database of CLARA_DATABASE_URL), for an operator:\n"
        "bring it up to this build's version, as every worker does when it opens the store,\n"
        "or say where it stands.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    commands.add_parser("migrate", help="bring the store's schema up to date")
    commands.add_parser("status", help="the store's schema version and this build's")
    return parser


PARSERS = {"demo": demo_parser, "web": web_parser, "outbox": outbox_parser, "db": db_parser}
"""The argument parser of each of clara_voice's own commands."""


__all__ = [
    "COMMANDS",
    "HELP_FLAGS",
    "LIVEKIT_COMMANDS",
    "OWN_COMMANDS",
    "PARSERS",
    "PROG",
    "SETTINGS_HELP",
    "CommandLineError",
    "OneLineParser",
    "command_parser",
    "usage",
]
