"""The worker as the Helm chart runs it: a read-only root filesystem where only its data
directory and /tmp are writable (deploy/helm/clara-voice, readOnlyRootFilesystem). The
worker runs in a mount namespace of its own with / remounted read-only, its data
directory bound at /srv and a scratch directory at /tmp: it registers, answers a spoken
turn, stores it, and drains on SIGTERM with exit 0, writing nowhere else."""

from __future__ import annotations

import asyncio
import shlex
import signal
import sys
from pathlib import Path

from testkit.checks import joined, talk, wait_rows
from testkit.human import Human
from testkit.livekit_server import LiveKitServer
from tests.e2e.conftest import Providers, StartClara

ROOT = Path(__file__).resolve().parents[2]
DATA_MOUNT = "/srv"  # exists on every Debian system, empty; bound only inside the namespace
EXIT_TIMEOUT = 60.0


def _kept_under_tmp(scratch: Path) -> list[str]:
    """Mounts that keep what the worker runs from (this tree, its virtualenv) visible,
    read-only, where it lives under /tmp (a fresh clone made with ``mktemp -d``): the
    scratch directory takes /tmp's place."""
    q = shlex.quote
    tree, venv = ROOT, Path(sys.prefix).resolve()
    steps: list[str] = []
    for path in [tree] if venv.is_relative_to(tree) else [tree, venv]:
        if not path.is_relative_to("/tmp"):
            continue
        inside = scratch / path.relative_to("/tmp")
        inside.mkdir(parents=True)
        steps += [f"mount --bind {q(str(path))} {q(str(inside))}"]
        steps += [f"mount -o remount,bind,ro {q(str(inside))}"]
    return steps


def _read_only_root(data: Path, scratch: Path) -> list[str]:
    steps = [
        f"mount --bind {shlex.quote(str(data))} {DATA_MOUNT}",
        *_kept_under_tmp(scratch),
        f"mount --rbind {shlex.quote(str(scratch))} /tmp",
        "mount -o remount,bind,ro /",  # this namespace's view only
        "if [ -w / ]; then echo 'the root is writable' >&2; exit 97; fi",
        "cd /",
        f"exec {shlex.quote(sys.executable)} -m clara_voice start",
    ]
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(steps)]


async def test_the_worker_serves_and_drains_on_a_read_only_root(
    livekit_server: LiveKitServer,
    clara: StartClara,
    room_name: str,
    providers: Providers,
    tmp_path: Path,
) -> None:
    data, scratch = tmp_path / "data", tmp_path / "scratch"
    data.mkdir()
    scratch.mkdir()
    providers.openai.replies = ["It is sunny and warm today."]
    worker = await clara(
        _read_only_root(data, scratch), CLARA_DATA_DIR=DATA_MOUNT, CLARA_DRAIN_TIMEOUT="1"
    )
    alice = Human(livekit_server, room_name, "alice")
    await joined(worker, alice)
    await talk(alice, "What is the weather like today", "It is sunny and warm today.")
    rows = await wait_rows(data, "SELECT role, text FROM messages ORDER BY seq", count=2)
    assert [role for role, _ in rows] == ["user", "assistant"]
    await alice.leave()

    worker.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(worker.proc.wait(), EXIT_TIMEOUT) == 0, worker.tail()
    output = "\n".join([*worker.stderr, *map(str, worker.lines)])
    assert "Read-only file system" not in output, worker.tail()
    assert not [line for line in worker.lines if line.get("level") in ("error", "critical")]
