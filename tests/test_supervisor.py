"""The demo's children (``clara_voice._supervisor``): ready when their address answers,
a failure named in one line, and nothing left running once the supervisor is closed,
whatever a child does on SIGTERM or leaves behind in its group."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from clara_voice._supervisor import ChildFailedError, ChildSpec, Supervisor
from testkit.processes import process_tree, running
from testkit.worker import free_port

# A child: serves 200 on its port, unless told otherwise by its arguments:
#   exit=N        exit with N instead of serving, after writing a line
#   stubborn      ignore SIGTERM
#   stubborn-once ignore the first SIGTERM only
#   leave         start a grandchild (in the same group) that outlives it
CHILD = r"""
import http.server, signal, subprocess, sys
port, flags = int(sys.argv[1]), sys.argv[2:]
for flag in flags:
    if flag.startswith("exit="):
        print("giving up", flush=True)
        sys.exit(int(flag[5:]))
if "leave" in flags:
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
def leave(*_):
    sys.exit(0)
if "stubborn" in flags:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif "stubborn-once" in flags:
    signal.signal(signal.SIGTERM, lambda *_: signal.signal(signal.SIGTERM, leave))
else:
    signal.signal(signal.SIGTERM, leave)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"OK")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def spec(tmp_path: Path, name: str, *flags: str, **options: float) -> ChildSpec:
    port = free_port()
    return ChildSpec(
        name=name,
        argv=(sys.executable, "-c", CHILD, str(port), *flags),
        env={"PATH": "/usr/bin:/bin"},
        log_path=tmp_path / "logs" / f"{name}.log",
        ready_url=f"http://127.0.0.1:{port}/",
        ready_timeout=options.get("ready_timeout", 30.0),
        stop_timeout=options.get("stop_timeout", 10.0),
        force_after=options.get("force_after"),
    )


def tree(supervisor: Supervisor) -> list[int]:
    return [pid for child in supervisor.pids() for pid in process_tree(child)]


async def test_children_run_until_closed_and_nothing_is_left(tmp_path: Path) -> None:
    supervisor = Supervisor(cwd=tmp_path)
    one = await supervisor.start(spec(tmp_path, "one", "leave"))
    two = await supervisor.start(spec(tmp_path, "two"))
    await asyncio.gather(supervisor.wait_ready(one), supervisor.wait_ready(two))
    started = tree(supervisor)
    assert len(started) == 3  # the grandchild one started, in one's group

    await supervisor.aclose()
    await supervisor.aclose()  # safe twice
    assert [pid for pid in started if running(pid)] == []
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_child_that_exits_before_it_is_ready_is_named_with_its_code(
    tmp_path: Path,
) -> None:
    supervisor = Supervisor(cwd=tmp_path)
    child = await supervisor.start(spec(tmp_path, "the page", "exit=3"))
    with pytest.raises(ChildFailedError) as failed:
        await supervisor.wait_ready(child)
    assert str(failed.value) == "the page exited with code 3 before it was ready"
    assert child.log_tail() == ["giving up"]
    await supervisor.aclose()
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_child_that_never_answers_fails_after_its_bound(tmp_path: Path) -> None:
    supervisor = Supervisor(cwd=tmp_path)
    silent = spec(tmp_path, "the worker", ready_timeout=1.0)
    child = await supervisor.start(replace(silent, ready_url=f"http://127.0.0.1:{free_port()}/"))
    with pytest.raises(ChildFailedError, match=r"^the worker was not ready within 1 s$"):
        await supervisor.wait_ready(child)
    assert child.proc.returncode is None  # still running: closing stops it
    await supervisor.aclose()
    assert not running(child.pid)


async def test_a_child_that_ignores_sigterm_is_killed_after_its_bound(tmp_path: Path) -> None:
    supervisor = Supervisor(cwd=tmp_path)
    child = await supervisor.start(spec(tmp_path, "stubborn", "stubborn", stop_timeout=1.0))
    await supervisor.wait_ready(child)
    await supervisor.aclose()
    assert child.proc.returncode == -9


async def test_a_second_sigterm_stops_a_child_that_waits_after_the_first(
    tmp_path: Path,
) -> None:
    """livekit-server drains on the first SIGTERM (waiting for its participants to leave)
    and stops on the second."""
    supervisor = Supervisor(cwd=tmp_path)
    child = await supervisor.start(
        spec(tmp_path, "server", "stubborn-once", stop_timeout=30.0, force_after=0.5)
    )
    await supervisor.wait_ready(child)
    await supervisor.aclose()
    assert child.proc.returncode == 0  # not killed


async def test_first_exit_names_the_child_that_exited(tmp_path: Path) -> None:
    supervisor = Supervisor(cwd=tmp_path)
    staying = await supervisor.start(spec(tmp_path, "staying"))
    await supervisor.wait_ready(staying)
    leaving = await supervisor.start(spec(tmp_path, "leaving", "exit=1"))
    assert await asyncio.wait_for(supervisor.first_exit(), 30) is leaving
    assert staying.proc.returncode is None
    await supervisor.aclose()
    assert not running(staying.pid)


async def test_kill_now_ends_every_child_at_once(tmp_path: Path) -> None:
    supervisor = Supervisor(cwd=tmp_path)
    child = await supervisor.start(spec(tmp_path, "stubborn", "stubborn", "leave"))
    await supervisor.wait_ready(child)
    started = tree(supervisor)
    supervisor.kill_now()
    assert await asyncio.wait_for(child.proc.wait(), 10) == -9
    await supervisor.aclose()
    assert [pid for pid in started if running(pid)] == []


async def test_a_child_that_cannot_be_started_is_one_line(tmp_path: Path) -> None:
    supervisor = Supervisor(cwd=tmp_path)
    missing = replace(spec(tmp_path, "the LiveKit server"), argv=(str(tmp_path / "nothing"),))
    with pytest.raises(ChildFailedError, match=r"^cannot start the LiveKit server: "):
        await supervisor.start(missing)
    assert supervisor.pids() == []
    await supervisor.aclose()
