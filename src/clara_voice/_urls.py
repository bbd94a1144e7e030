"""The URLs a setting may hold, checked: LiveKit's, the HTTP backend's, PostgreSQL's."""

from __future__ import annotations

import ipaddress
from urllib.parse import ParseResult, parse_qs, urlparse


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


def check_postgres_url(value: str) -> None:
    """Raise unless ``value`` is a ``postgresql://`` (or ``postgres://``) URL naming a host
    (or a socket directory, ``?host=/run/postgresql``) and a database. It may carry a
    password: no message here repeats the value."""
    parsed = urlparse(value)
    if parsed.scheme not in ("postgresql", "postgres"):
        raise ValueError("must be a postgresql:// (or postgres://) URL")
    query = parse_qs(parsed.query)
    host = parsed.netloc.rpartition("@")[2]
    if not (host.strip(":,") or query.get("host")):
        raise ValueError(
            "must name a host (postgresql://host:5432/clara) or a socket directory "
            "(postgresql:///clara?host=/run/postgresql)"
        )
    if "," not in host:  # several hosts: the driver checks each
        try:
            _ = parsed.port  # parsing it is the check
        except ValueError:
            raise ValueError("has a port that is not a number from 1 to 65535") from None
    if not (parsed.path.strip("/") or query.get("dbname") or query.get("database")):
        raise ValueError("must name a database (postgresql://host:5432/clara)")
    if parsed.fragment:
        raise ValueError("must not have a #fragment")


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
    "check_postgres_url",
    "is_loopback",
    "is_plain_http_elsewhere",
]
