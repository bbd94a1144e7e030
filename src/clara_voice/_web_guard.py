"""What the page's token endpoint checks before it signs anything.

- **Who**: the server picks every identity (:func:`new_identity`: random, unguessable); a
  name the person types is only a display name (:func:`display_name`). A page that
  reconnects keeps its identity with the resume ticket it was given with its last token
  (:class:`ResumeTickets`: the identity and an expiry, signed with a key derived from the
  LiveKit API secret), so only that page can get that identity back.
- **From where**: only same-origin requests are answered (:func:`foreign_request`): the
  ``Host`` must be one of the page's own host names (its address, ``localhost``,
  ``CLARA_WEB_ALLOWED_HOSTS``), which stops DNS rebinding, and an ``Origin``, when the
  browser sends one, must be the page's own; the body must be ``application/json``, which
  a cross-site form cannot send without a preflight the endpoint never answers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
import unicodedata
from collections.abc import Mapping
from urllib.parse import urlsplit

RESUME_TTL = 12 * 3600
"""Seconds a resume ticket lets its page get its identity back (each token renews it)."""
MAX_NAME = 64
_KEY_LABEL = b"clara-voice web resume ticket v1"


def new_identity() -> str:
    """A participant identity nobody can guess (96 random bits)."""
    return f"web-{secrets.token_hex(12)}"


def display_name(value: object) -> str | None:
    """``value`` as a display name (trimmed, at most ``MAX_NAME`` characters, no control
    characters), or ``None`` when it is not one."""
    if not isinstance(value, str):
        return None
    name = " ".join(value.split())
    if not name or len(name) > MAX_NAME:
        return None
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in name):
        return None
    return name


class ResumeTickets:
    """Signs and checks the tickets that give a page its identity back."""

    def __init__(self, secret: str, *, ttl: float = RESUME_TTL) -> None:
        self._key = hmac.new(secret.encode(), _KEY_LABEL, hashlib.sha256).digest()
        self._ttl = ttl

    def issue(self, identity: str, *, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self._ttl)
        body = _b64(json.dumps({"i": identity, "e": expires}, separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}"

    def identity(self, ticket: object, *, now: float | None = None) -> str | None:
        """The identity ``ticket`` gives back, or ``None`` (forged, expired, malformed)."""
        if not isinstance(ticket, str) or len(ticket) > 512 or ticket.count(".") != 1:
            return None
        body, mac = ticket.split(".")
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, binascii.Error):
            return None
        if not isinstance(data, dict):
            return None
        identity, expires = data.get("i"), data.get("e")
        if not isinstance(identity, str) or not isinstance(expires, int):
            return None
        if expires < (time.time() if now is None else now):
            return None
        return identity

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _host_name(netloc: str) -> str:
    """The host of ``netloc`` (``host:port``, ``[v6]:port``), lowercase, without the port."""
    try:
        return (urlsplit(f"//{netloc}").hostname or "").lower()
    except ValueError:
        return ""


def foreign_request(headers: Mapping[str, str], hosts: frozenset[str]) -> str | None:
    """Why a request with ``headers`` is not the page's own (``None`` when it is)."""
    host = headers.get("Host", "")
    if _host_name(host) not in hosts:
        return "this page answers to its own host names only (CLARA_WEB_ALLOWED_HOSTS)"
    origin = headers.get("Origin")
    if origin is not None:
        parts = urlsplit(origin) if origin != "null" else None
        same = parts is not None and parts.netloc.lower() == host.lower()
        if parts is None or parts.scheme not in ("http", "https") or not same:
            return "cross-origin requests are refused"
    return None


def json_body(headers: Mapping[str, str]) -> bool:
    """Whether the request says its body is JSON."""
    kind = headers.get("Content-Type", "").split(";")[0].strip().lower()
    return kind == "application/json"


__all__ = [
    "MAX_NAME",
    "RESUME_TTL",
    "ResumeTickets",
    "display_name",
    "foreign_request",
    "json_body",
    "new_identity",
]
