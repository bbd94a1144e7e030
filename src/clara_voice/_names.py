"""Names a person or an operator gives that end up in LiveKit: rooms and host names."""

from __future__ import annotations

import re

ROOM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$|^\[?[0-9A-Fa-f:.]+\]?$")


def check_room_name(value: str) -> str:
    """``value`` if it is a room name clara accepts; ValueError otherwise."""
    if not ROOM_NAME.match(value):
        raise ValueError("must be 1-128 letters, digits or . _ : @ - (not first)")
    return value


def check_host_names(value: str) -> str:
    """``value`` if it is a comma-separated list of host names; ValueError otherwise."""
    for host in filter(None, (h.strip() for h in value.split(","))):
        if not HOST_NAME.match(host):
            raise ValueError(f"{host!r} is not a host name (no scheme, port or path)")
    return value


def page_hosts(bind: str, allowed: str) -> frozenset[str]:
    """The host names the page bound to ``bind`` answers to: its address, this machine's
    names and the ``allowed`` ones (lowercase, no port)."""
    named = (h.strip().lower() for h in allowed.split(","))
    own = {bind.lower().strip("[]"), "localhost", "127.0.0.1", "::1"}
    return frozenset({*own, *filter(None, named)} - {"0.0.0.0", "::"})


__all__ = ["HOST_NAME", "ROOM_NAME", "check_host_names", "check_room_name", "page_hosts"]
