"""Processes and their sockets, read from ``/proc``: what a command started (its whole
tree), which of those are still running, and which addresses they serve on.

For tests that run a command as a person would (``python -m clara_voice demo``) and check
that it leaves nothing running and serves nothing beyond loopback.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
_UNCONNECTED = "07"  # a UDP socket that is bound, not connected: it serves its port


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()  # comm may hold spaces and parentheses


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def process_tree(root: int) -> list[int]:
    """``root`` and every running process descended from it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if running(pid):
            tree.append(pid)
            todo += children.get(pid, [])
    return tree


def serving_addresses(pids: list[int]) -> list[tuple[str, str, int, int]]:
    """(protocol, address, port, pid) of every TCP socket listening and every UDP socket
    bound but not connected, among the processes ``pids``."""
    owners: dict[str, int] = {}
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            links = [os.readlink(fd) for fd in fd_dir.iterdir()]
        except OSError:
            continue  # exited meanwhile
        for link in links:
            if link.startswith("socket:["):
                owners[link[8:-1]] = pid
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        wanted = _LISTEN if proto.startswith("tcp") else _UNCONNECTED
        try:
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == wanted and inode in owners:
                address, port = _address(local)
                found.append((proto, address, port, owners[inode]))
    return found


def is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def _address(field: str) -> tuple[str, int]:
    """``0100007F:1F90`` (and the IPv6 form) from /proc/net as (address, port)."""
    hex_address, hex_port = field.split(":")
    raw = bytes.fromhex(hex_address)
    # the kernel writes each 32-bit word in host (little-endian) order
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words)), int(hex_port, 16)


__all__ = ["is_loopback", "process_tree", "running", "serving_addresses"]
