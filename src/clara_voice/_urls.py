"""The URLs a setting may hold, checked: LiveKit's, and the HTTP backend's."""

from __future__ import annotations

import ipaddress
from urllib.parse import ParseResult, urlparse


def check_livekit_url(value: str) -> str:
    """``value`` when it is a ws://, wss://, http:// or https:// URL with a host, and no
    credentials, query or fragment (the worker authenticates with its key and secret)."""
    parsed = urlparse(value)
    if parsed.scheme not in ("ws", "wss", "http", "https") or not parsed.hostname:
        raise ValueError("must be a ws://, wss://, http:// or https:// URL with a host")
    _check_bare(parsed, "LIVEKIT_API_KEY and LIVEKIT_API_SECRET")
    return value


def check_http_url(value: str, *, credentials: str) -> str:
    """``value`` (without a trailing slash) when it is an http(s) URL with a host and no
    credentials, query or fragment: the ``credentials`` setting carries those, in a header."""
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    _check_bare(parsed, credentials)
    return value.rstrip("/")


def _check_bare(parsed: ParseResult, credentials: str) -> None:
    if parsed.username or parsed.password or parsed.query or parsed.fragment:
        raise ValueError(
            f"must not carry credentials, a query or a fragment (set {credentials} instead)"
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_plain_http_elsewhere(url: str) -> bool:
    """Whether ``url`` is plain http:// to a host other than this machine."""
    parsed = urlparse(url)
    return parsed.scheme == "http" and not is_loopback(parsed.hostname or "")


__all__ = [
    "check_http_url",
    "check_livekit_url",
    "is_loopback",
    "is_plain_http_elsewhere",
]
