"""Keeping secrets out of every line the service writes.

A setting can carry a secret inside a URL (``https://user:pass@host/…``,
``wss://host/?token=…``). :func:`redact` hides the user information and every query value
of every URL in a text, whatever the setting or log field it came from; the logging
pipeline applies it to every line, and the settings' error lines to the value they show.

Once settings are loaded, their secrets (keys, tokens, passwords and query values of URL
settings) are remembered too (:func:`remember_secrets`), and :func:`redact` hides each one
wherever it shows up, in or out of a URL: a provider's error quoting the key it was sent, a
URL cut in pieces by a library's message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, SecretStr

HIDDEN = "***"
MIN_SECRET_LENGTH = 8
"""Shorter values are not remembered (the dev server's ``secret`` is no secret, and hiding
a short word everywhere would garble every line)."""

_known: list[str] = []  # longest first

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_USERINFO = re.compile(r"^(?P<scheme>[^:]+://)[^/?#@]*@")
_LOOSE_USERINFO = re.compile(r"[^\s/?#@'\"]+@")
_QUERY_VALUE = re.compile(r"(?P<name>[?&;][^=&;#]*=)[^&;#]*")


def _redact_url(match: re.Match[str]) -> str:
    url = _USERINFO.sub(rf"\g<scheme>{HIDDEN}@", match.group(0))
    return _QUERY_VALUE.sub(rf"\g<name>{HIDDEN}", url)


def redact(text: str) -> str:
    """``text`` with the user information and query values of its URLs hidden, and every
    remembered secret."""
    if "://" in text:
        text = _URL.sub(_redact_url, text)
    for secret in _known:
        if secret in text:
            text = text.replace(secret, HIDDEN)
    return text


def redact_loose(text: str) -> str:
    """:func:`redact`, and also what looks like user information or query values outside a
    well-formed URL (``user:pass@host/?token=…`` given without a scheme): for a value a
    person typed wrong, shown in the line that says so."""
    text = _LOOSE_USERINFO.sub(f"{HIDDEN}@", redact(text))
    return _QUERY_VALUE.sub(rf"\g<name>{HIDDEN}", text)


def remember_secrets(secrets: Iterable[str]) -> None:
    """Hide each of ``secrets`` (at least ``MIN_SECRET_LENGTH`` long) from now on."""
    found = set(_known) | {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}
    _known[:] = sorted(found, key=len, reverse=True)


def secrets_in(value: Any) -> Iterator[str]:
    """The secrets a settings object holds: its ``SecretStr`` values, and the password and
    query values of every URL among its strings and secrets (nested models and lists
    included)."""
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        yield secret
        yield from secrets_in(secret)  # a secret URL's password too, wherever it shows alone
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from secrets_in(getattr(value, name))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from secrets_in(item)
    elif isinstance(value, str) and "://" in value:
        try:
            parts = urlsplit(value)
            password = parts.password
        except ValueError:
            return
        if password:
            yield password
        yield from (v for _, v in parse_qsl(parts.query))


def redact_value(value: Any) -> Any:
    """``value`` with its strings redacted (strings in lists, tuples and dicts too)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value


__all__ = [
    "HIDDEN",
    "MIN_SECRET_LENGTH",
    "redact",
    "redact_loose",
    "redact_value",
    "remember_secrets",
    "secrets_in",
]
