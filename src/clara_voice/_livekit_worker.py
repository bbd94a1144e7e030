"""livekit-agents internals the worker process has to reach, each in one place.

Where livekit offers no public API for something the worker needs, the dependency lives
here, with a comment saying why; tests/test_worker_health.py and
tests/test_worker_process.py fail loudly when a livekit upgrade moves one of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import typer
import typer.exceptions
import typer.main
from livekit.agents import AgentServer
from livekit.agents.log import logger

CONNECT_FAILED_PREFIX = "failed to connect to livekit"
"""How livekit-agents 1.8 begins the warning it logs before each connection retry."""


def set_live(server: AgentServer, live: bool) -> None:
    """Make livekit's health endpoint (``GET /``) answer 200 (``live``) or 503.

    livekit-agents 1.8's endpoint answers 503 only while its private ``_connection_failed``
    is set, which livekit itself sets when it gives up connecting; there is no public way to
    hold it at 503 until the worker has registered for the first time, which is what a
    startup probe needs to see.
    """
    if not hasattr(server, "_connection_failed"):
        raise AttributeError("livekit's AgentServer no longer has _connection_failed")
    server._connection_failed = not live


async def drain(server: AgentServer, bound: float | None) -> None:
    """livekit's ``AgentServer.drain``: no new jobs, then wait (at most ``bound`` seconds;
    ``None`` or 0: no bound) until every running job has ended.

    livekit-agents 1.8's own waits with ``await proc.join()`` in a loop over the pool's
    processes that never yields once a job's process has ended but the pool's task has
    not yet dropped it: when two jobs end together (a node closing its empty rooms at
    once), the worker spun at 100 % CPU and never exited. This is its steps, yielding to
    the pool between rounds. It uses the server's private lock, flag and pool, as livekit's
    ``drain`` does.
    """
    async with server._lock:
        if server._draining:
            return
        logger.info("draining worker", extra={"id": server.id, "timeout": bound})
        server._draining = True
        await server._update_worker_status()

        async def jobs_ended() -> None:
            await asyncio.gather(*server._job_lifecycle_tasks, return_exceptions=True)
            while running := [p for p in server._proc_pool.processes if p.running_job]:
                await asyncio.gather(*(p.join() for p in running), return_exceptions=True)
                await asyncio.sleep(0)  # the pool drops an ended process in its own task

        await asyncio.wait_for(jobs_ended(), bound or None)


def connection_failure(record: logging.LogRecord) -> tuple[bool, Any]:
    """Whether ``record`` is livekit's "failed to connect to livekit, retrying" warning, and
    the error it carries (livekit logs it with ``extra={"error": ...}``)."""
    message = record.msg if isinstance(record.msg, str) else ""
    return message.startswith(CONNECT_FAILED_PREFIX), getattr(record, "error", None)


def is_give_up_traceback(record: logging.LogRecord) -> bool:
    """Whether ``record`` is livekit's traceback of giving up (the worker says it in a line)."""
    exc = record.exc_info[1] if record.exc_info else None
    return (
        record.msg == "Error in _connection_task"
        and isinstance(exc, RuntimeError)
        and CONNECT_FAILED_PREFIX in str(exc)
    )


class CliArgsError(Exception):
    """livekit's CLI refuses the command line (its message, one line)."""


def _cli_group() -> Any:
    from livekit.agents.cli import _legacy

    return typer.main.get_command(_legacy._build_cli(AgentServer()))


def cli_commands() -> list[str]:
    """The commands of livekit's CLI, by name."""
    group = _cli_group()
    return sorted(group.list_commands(group.context_class(group)))


def parse_cli_args(command: str, args: Sequence[str], *, prog: str) -> bool:
    """Parse ``command args`` as livekit's CLI will, running nothing: True when they are
    right, False when they asked for help (livekit's own, printed here);
    :class:`CliArgsError` when livekit refuses them.

    livekit-agents 1.8 builds its CLI (typer) only inside ``cli.run_app``, which also runs
    the command; its private ``_legacy._build_cli`` is the only way to parse a command line
    first, before settings are read and a worker is built from them.
    """
    group = _cli_group()
    parent = group.context_class(group, info_name=prog)
    cli_command = group.get_command(parent, command)
    if cli_command is None:
        raise CliArgsError(f"livekit's CLI has no command {command!r}")
    args = ["--help" if arg == "-h" else arg for arg in args]
    try:
        cli_command.make_context(command, args, parent=parent)
    except typer.Exit:  # raised once the help is printed
        return False
    except typer.exceptions.TyperException as exc:
        raise CliArgsError(exc.format_message().rstrip(".")) from None
    return True


__all__ = [
    "CONNECT_FAILED_PREFIX",
    "CliArgsError",
    "cli_commands",
    "connection_failure",
    "drain",
    "is_give_up_traceback",
    "parse_cli_args",
    "set_live",
]
