"""Network outages for one client process, with iptables inside the private network.

A client run through :meth:`Outage.command` has a group id of its own (it keeps the
root user id, so it can read the files it needs). Every connection such a process opens
is marked (``CONNMARK`` on ``OUTPUT``, matched by ``--gid-owner``); :meth:`Outage.cut`
drops every packet of a marked connection on ``INPUT``, both ways, since on loopback every
packet passes ``INPUT``; :meth:`Outage.restore` lets them through again. The client sees
a real outage: no leave, no close, its packets just stop. Nothing else in the namespace
is touched, and the rules go with the namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess

CLIENT_GID = 4242
MARK = "0x4242"
_MARKING = ["OUTPUT", "-m", "owner", "--gid-owner", str(CLIENT_GID), "-j", "CONNMARK"]
_DROP = ["INPUT", "-m", "connmark", "--mark", MARK, "-j", "DROP"]


def outage_unavailable() -> str | None:
    """Why outages cannot be made here (one line), or None."""
    if os.geteuid() != 0:
        return "the outage tests need root inside the test namespace (iptables, setpriv)"
    for tool in ("iptables", "setpriv"):
        if shutil.which(tool) is None:
            return f"the outage tests need {tool} (Debian: apt-get install iptables util-linux)"
    return None


def _iptables(*args: str) -> None:
    subprocess.run(["iptables", "-w", *args], check=True, capture_output=True)


class Outage:
    """The on/off switch for the network of processes started through :meth:`command`."""

    def __init__(self) -> None:
        self.cut_now = False

    def install(self) -> None:
        _iptables("-A", *_MARKING, "--set-mark", MARK)

    def uninstall(self) -> None:
        if self.cut_now:
            self.restore()
        _iptables("-D", *_MARKING, "--set-mark", MARK)

    @staticmethod
    def command(argv: list[str]) -> list[str]:
        """``argv`` run with the client group id, so that the outage applies to it."""
        return ["setpriv", f"--regid={CLIENT_GID}", "--clear-groups", *argv]

    def cut(self) -> None:
        _iptables("-I", *_DROP)
        self.cut_now = True

    def restore(self) -> None:
        _iptables("-D", *_DROP)
        self.cut_now = False
