"""A job process writing clara_voice metrics (run by test_telemetry and test_worker_process).

``PROMETHEUS_MULTIPROC_DIR=<folder> python -m tests.metrics_writer_proc '<json>'`` imports
:mod:`clara_voice.telemetry` (so its metrics go to the folder, as in a job process), sets
what the JSON asks as one agent would, prints ``ready <pid>`` (flushed), and waits until
its stdin closes. Then it exits, taking its agent's share back first only when the JSON
says ``"clear": true`` (otherwise it ends like a crashed job process).

JSON keys, all optional: ``states`` ({state: count}), ``outbox`` (int), ``unhealthy``
(bool), ``memory_mb`` (float), ``turns`` (list of {field: seconds} of TurnMetrics),
``errors`` (list of sources), ``reconnections`` (int), ``clear`` (bool).

Tests start it with :func:`metrics_writers`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clara_voice import telemetry
from clara_voice.voice.messages import TurnMetrics

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0  # interpreter start and the imports (livekit comes with clara_voice)


class Writer:
    """A running writer process."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid

    async def stop(self) -> None:
        """Close its stdin and wait until it has exited (and been reaped)."""
        async with asyncio.timeout(10):
            _, stderr = await self.proc.communicate(b"")  # closes its stdin
        assert self.proc.returncode == 0, stderr.decode(errors="replace")


@asynccontextmanager
async def metrics_writers(directory: Path, *specs: dict[str, Any]) -> AsyncIterator[list[Writer]]:
    """One writer process for ``directory`` per spec (started together), each having written
    its spec; killed on the way out unless the test stopped them."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env[telemetry.MULTIPROC_ENV] = str(directory)
    procs: list[asyncio.subprocess.Process] = []
    try:
        for spec in specs:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.metrics_writer_proc",
                json.dumps(spec),
                cwd=REPO,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            procs.append(proc)
        for proc in procs:
            assert proc.stdout is not None and proc.stderr is not None
            async with asyncio.timeout(START_TIMEOUT):
                line = await proc.stdout.readline()
            if line.decode().strip() != f"ready {proc.pid}":
                stderr = await proc.stderr.read()
                raise AssertionError(f"a metrics writer did not start: {stderr.decode()[-2000:]}")
        yield [Writer(proc) for proc in procs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.communicate()


def main(spec: dict[str, Any]) -> None:
    gauges = telemetry.AgentGauges()
    gauges.set_session_states(spec.get("states", {}))
    gauges.set_outbox_pending(spec.get("outbox", 0))
    gauges.set_unhealthy(spec.get("unhealthy", False))
    if "memory_mb" in spec:
        telemetry.set_memory_mb(spec["memory_mb"])
    for latencies in spec.get("turns", []):
        telemetry.record_turn(
            TurnMetrics(at=datetime.now(UTC), user_text="", reply_text="", **latencies)
        )
    for source in spec.get("errors", []):
        telemetry.count_error(source)
    for _ in range(spec.get("reconnections", 0)):
        telemetry.count_reconnection()
    print(f"ready {os.getpid()}", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    if spec.get("clear"):
        gauges.clear()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
