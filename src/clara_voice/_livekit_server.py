"""The LiveKit server ``python -m clara_voice demo`` runs (the end-to-end tests run the
same, through ``testkit/livekit_server.py``): its configuration, and where its binary is.

The configuration keeps everything on this machine, and works inside the tests' private
network (``scripts/private-net``) as on a desktop:

* signalling and the server API on 127.0.0.1 (``bind_addresses``), development mode;
* WebRTC media on one UDP port, bound only to loopback addresses (``rtc.ips``: without
  it the server binds that port on every interface's address, a LAN's too), and ICE
  candidates on 127.0.0.1 only (``node_ip``; no external IP lookup, no public STUN
  server, whose default would be asked; no TURN);
* no ICE over TCP unless asked for: livekit-server binds its TCP media port on every
  interface (``*``), with no setting to narrow it, so the demo leaves it off.

A browser on the same machine reaches 127.0.0.1 from its own host candidates (libwebrtc
ignores loopback adapters, but the kernel delivers a packet from a LAN address to
127.0.0.1 over loopback all the same).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

BUILD_SCRIPT = Path("scripts") / "livekit-server"
"""The repository's script that builds livekit-server and says where it is."""
SCRIPT_TIMEOUT = 10.0


class ServerBinaryError(RuntimeError):
    """No livekit-server binary to run (one line saying how to get one)."""


def server_config(
    *,
    port: int,
    api_key: str,
    api_secret: str,
    rtc_udp: int,
    rtc_tcp: int | None = None,
    redis: str | None = None,
) -> str:
    """The server's YAML (key names from livekit's pkg/config; unknown keys fail its start):
    signalling on 127.0.0.1:``port``, media on UDP ``rtc_udp`` (and TCP ``rtc_tcp``, bound
    on every interface, when given), one key pair (quoted: a JSON string is YAML's too);
    with ``redis`` (``host:port``, the tests' fleets) a node of LiveKit's multi-node mode."""
    shared = f"redis:\n  address: {redis}\n" if redis else ""
    return f"""\
port: {port}
bind_addresses: ["127.0.0.1"]
development: true
keys:
  {json.dumps(api_key)}: {json.dumps(api_secret)}
rtc:
  tcp_port: {rtc_tcp or 0}
  udp_port: {rtc_udp}
  node_ip: 127.0.0.1
  use_external_ip: false
  enable_loopback_candidate: true
  stun_servers: ["127.0.0.1:3478"]
  ips:
    includes: ["127.0.0.0/8"]
turn:
  enabled: false
{shared}logging:
  level: info
"""


def find_server_binary(configured: Path | None, root: Path) -> Path:
    """The livekit-server to run: ``configured`` (``LIVEKIT_SERVER_BIN``), else the one the
    repository's ``scripts/livekit-server`` builds (``root`` is the repository), else
    ``livekit-server`` on the PATH; :class:`ServerBinaryError` when there is none."""
    hint = "run `make livekit-server` (builds it with Go) or set LIVEKIT_SERVER_BIN to one"
    if configured is not None:
        path = configured
    elif (root / BUILD_SCRIPT).is_file():
        path = _script_path(root)
    elif found := shutil.which("livekit-server"):
        return Path(found)
    else:
        raise ServerBinaryError(f"no livekit-server on the PATH: {hint}")
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ServerBinaryError(f"no livekit-server at {path}: {hint}")
    return path


def _script_path(root: Path) -> Path:
    try:
        done = subprocess.run(
            [str(root / BUILD_SCRIPT), "path"],
            capture_output=True,
            text=True,
            check=True,
            timeout=SCRIPT_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServerBinaryError(f"{BUILD_SCRIPT} path failed: {exc}") from None
    return Path(done.stdout.strip())


__all__ = [
    "BUILD_SCRIPT",
    "ServerBinaryError",
    "find_server_binary",
    "server_config",
]
