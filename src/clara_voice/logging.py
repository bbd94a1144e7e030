"""Logging: structlog rendering the standard ``logging`` records livekit and we emit.

clara_voice logs through stdlib loggers under ``clara_voice.*`` with context passed as
``extra`` key/values; livekit does the same under ``livekit.*``. Job processes forward
their records to the worker process (livekit's log queue), where one root handler renders
every record with structlog: JSON lines for ``start``, readable lines for ``dev``.

The job's own context (job id, room) is attached to every record of that job by livekit's
``JobContext.log_context_fields``; participant identity and session id are bound with
:func:`get_logger` ``.bind(...)``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog
from structlog.typing import EventDict, WrappedLogger

from clara_voice._redact import redact_value

RenderFormat = Literal["json", "console"]

# context keys whose values never reach a log line
_REDACTED_KEYS = frozenset({"token", "api_secret", "authorization", "password", "secret"})
_HANDLER_MARK = "_clara_voice_handler"


class ContextLogger(logging.LoggerAdapter[logging.Logger]):
    """A stdlib logger carrying key/value context into every record it emits."""

    def bind(self, **context: Any) -> ContextLogger:
        """A logger with ``context`` added to (and overriding) this one's."""
        return ContextLogger(self.logger, {**(self.extra or {}), **context})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def get_logger(name: str, **context: Any) -> ContextLogger:
    """``logging.getLogger(name)`` wrapped to carry ``context`` (name under ``clara_voice``)."""
    return ContextLogger(logging.getLogger(name), context)


def _redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in _REDACTED_KEYS.intersection(event_dict):
        event_dict[key] = "**********"
    # a secret inside a URL (user:pass@, ?token=) is hidden wherever it appears
    for key, value in event_dict.items():
        if key != "_record" and isinstance(value, str | list | tuple | dict):
            event_dict[key] = redact_value(value)
    return event_dict


def _drop_formatter_leftovers(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # set on the record by whichever stdlib formatter saw it first; never real context
    event_dict.pop("message", None)
    event_dict.pop("asctime", None)
    return event_dict


def _forwarded_traceback(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # records forwarded from job processes carry their traceback as text in exc_text
    record = event_dict.get("_record")
    if record is not None and record.exc_text and "exc_info" not in event_dict:
        event_dict["exception"] = record.exc_text
    return event_dict


def build_formatter(fmt: RenderFormat) -> logging.Formatter:
    """The structlog formatter every clara_voice log line goes through."""
    pre_chain: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _drop_formatter_leftovers,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _forwarded_traceback,
        _redact,
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(default=str, ensure_ascii=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    # tracebacks as text, redacted like everything else (an error may quote a URL)
    final = [structlog.processors.format_exc_info, _redact, renderer]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )


def configure_logging(*, level: str, fmt: RenderFormat, stream: Any = None) -> logging.Handler:
    """Make structlog render every record of this process; returns the handler installed.

    Replaces the console handlers already on the root logger (livekit's CLI installs its
    own before our code runs) so each record is printed exactly once.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False) or (
            type(handler) is logging.StreamHandler
            and getattr(handler, "stream", None) in (sys.stdout, sys.stderr)
        ):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(build_formatter(fmt))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings become log lines, not stray stderr text
    for name in LEVELLED_LOGGERS:
        logging.getLogger(name).setLevel(level)
    _set_plugin_levels(level)
    return handler


LEVELLED_LOGGERS = ("clara_voice", "livekit", "livekit.agents", "livekit.plugins")
"""Loggers set to ``CLARA_LOG_LEVEL``: ours, and livekit's (its CLI sets livekit.agents and
each plugin's logger to its own ``--log-level`` before our code runs)."""


def _set_plugin_levels(level: str) -> None:
    from livekit.agents import Plugin

    for plugin in Plugin.registered_plugins:
        if plugin.logger is not None:
            plugin.logger.setLevel(level)
