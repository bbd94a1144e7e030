"""Keeping secrets out of every line the service writes.

A setting can carry a secret inside a URL (``https://user:pass@host/…``,
``wss://host/?token=…``). :func:`redact` hides the user information and every query value
of every URL in a text, whatever the setting or log field it came from; the logging
pipeline applies it to every line, and the settings' error lines to the value they show.
"""

from __future__ import annotations

import re
from typing import Any

HIDDEN = "***"

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_USERINFO = re.compile(r"^(?P<scheme>[^:]+://)[^/?#@]*@")
_QUERY_VALUE = re.compile(r"(?P<name>[?&;][^=&;#]*=)[^&;#]*")


def _redact_url(match: re.Match[str]) -> str:
    url = _USERINFO.sub(rf"\g<scheme>{HIDDEN}@", match.group(0))
    return _QUERY_VALUE.sub(rf"\g<name>{HIDDEN}", url)


def redact(text: str) -> str:
    """``text`` with the user information and query values of its URLs hidden."""
    return _URL.sub(_redact_url, text) if "://" in text else text


def redact_value(value: Any) -> Any:
    """``value`` with its strings redacted (strings in lists, tuples and dicts too)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value


__all__ = ["HIDDEN", "redact", "redact_value"]
