"""Persistence throughput and event-loop stalls (issue #4, item 7).

Method: in one process and one event loop, a producer puts ``--records`` conversation-turn
records (about 300 bytes of JSON each) in bursts of ``--burst`` — the way an agent's
handlers do, without awaiting — and a ticker task measures the event loop's responsiveness
(the largest lateness of a 5 ms ``asyncio.sleep``) the whole time. Figures per target:

* ``ack_per_s``: records acknowledged per second (committed to the outbox file, fsynced);
* ``delivered_per_s``: records delivered to the backend per second, first put to drained;
* ``max_loop_stall_ms``: the worst loop lateness seen while putting and delivering.

Targets: the outbox in front of the embedded SQLite store, the outbox in front of a
loopback HTTP backend (``testkit.loopback_backend``), and, as the baseline, the naive way the
seed describes — ``asyncio.create_task(backend.save(...))`` — with SQLite writes made on
the event loop itself (no outbox, no thread), to show what that costs the audio path.

    .venv/bin/python -m bench.persistence --records 5000
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sqlite3  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator, Awaitable, Callable  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402
from typing import Any  # noqa: E402

from pydantic import SecretStr  # noqa: E402

from bench._loop import StallMeter  # noqa: E402
from clara_voice.persistence import Backend, OutboxRecord  # noqa: E402
from clara_voice.persistence.http import HttpBackend  # noqa: E402
from clara_voice.persistence.outbox import Outbox  # noqa: E402
from clara_voice.persistence.sqlite import DB_FILENAME, SQLiteBackend  # noqa: E402
from testkit.loopback_backend import LoopbackBackend  # noqa: E402

TICK = 0.005


def record(i: int) -> OutboxRecord:
    return OutboxRecord(
        key=f"turn:bench-session:{i}",
        kind="turn",
        payload={
            "conversation_id": "conv-bench",
            "room": "bench-room",
            "session_id": "bench-session",
            "participant": "alice",
            "seq": i,
            "role": "user" if i % 2 == 0 else "assistant",
            "text": f"message number {i} of the benchmark conversation, " + "x" * 120,
            "at": "2026-11-21T12:00:00+00:00",
            "metrics": {"e2e_latency": 0.8, "llm_ttft": 0.3},
        },
    )


async def produce(put: Callable[[OutboxRecord], Awaitable[None]], n: int, burst: int) -> float:
    """Put ``n`` records in bursts without awaiting each; seconds until all acknowledged."""
    start = time.perf_counter()
    pending: list[Awaitable[None]] = []
    for i in range(n):
        pending.append(put(record(i)))
        if (i + 1) % burst == 0:
            await asyncio.sleep(0)
    await asyncio.gather(*pending)
    return time.perf_counter() - start


async def through_outbox(backend: Backend, n: int, burst: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        outbox = Outbox(Path(tmp), backend)
        await outbox.start()
        with StallMeter(TICK) as meter:
            start = time.perf_counter()
            acked = await produce(lambda r: outbox.put_nowait(r), n, burst)
            await outbox.wait_drained()
            delivered = time.perf_counter() - start
        stats = outbox.stats
        await outbox.aclose()
    return {
        "ack_per_s": round(n / acked),
        "delivered_per_s": round(n / delivered),
        "max_loop_stall_ms": round(meter.worst * 1000, 1),
        "delivered": stats.delivered,
        "dead_lettered": stats.dead_lettered,
    }


@asynccontextmanager
async def sqlite_backend() -> AsyncIterator[SQLiteBackend]:
    with tempfile.TemporaryDirectory() as tmp:
        backend = SQLiteBackend(Path(tmp) / DB_FILENAME)
        try:
            await backend.agent_joined(room="bench-room", conversation_id="conv-bench")
            yield backend
        finally:
            await backend.aclose()


async def naive_on_loop(n: int, burst: int) -> dict[str, Any]:
    """The seed's ``create_task(save(...))`` with SQLite on the loop thread (synchronous=FULL)."""
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "naive.db")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE turns (key TEXT PRIMARY KEY, payload TEXT)")

        async def save(r: OutboxRecord) -> None:
            with db:
                db.execute(
                    "INSERT OR IGNORE INTO turns VALUES (?, ?)", (r.key, json.dumps(r.payload))
                )

        with StallMeter(TICK) as meter:
            elapsed = await produce(lambda r: asyncio.ensure_future(save(r)), n, burst)
        db.close()
    return {
        "ack_per_s": round(n / elapsed),
        "delivered_per_s": round(n / elapsed),
        "max_loop_stall_ms": round(meter.worst * 1000, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--burst", type=int, default=10)
    args = parser.parse_args()
    n, burst = args.records, args.burst
    print(
        json.dumps(
            {
                "method": "records put in bursts without awaiting; ack = committed to the "
                "outbox; delivered = first put to outbox drained; stall = worst lateness of "
                "a 5 ms asyncio.sleep during the run",
                "records": n,
                "burst": burst,
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            }
        )
    )
    async with sqlite_backend() as backend:
        result = await through_outbox(backend, n, burst)
    print(json.dumps({"target": "outbox→sqlite", **result}, ensure_ascii=False))
    async with LoopbackBackend(token="bench-token") as server:
        http = HttpBackend(server.base_url, token=SecretStr("bench-token"), timeout=5.0)
        try:
            result = await through_outbox(http, n, burst)
        finally:
            await http.aclose()
    print(json.dumps({"target": "outbox→http (loopback)", **result}, ensure_ascii=False))
    print(
        json.dumps(
            {"target": "baseline: sqlite on the loop", **await naive_on_loop(n, burst)},
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
