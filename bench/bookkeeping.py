"""Bookkeeping off the hot path: how long one health round and one sync validation take.

Method: in one process, the real code over many sessions, timed with ``perf_counter`` on
the event loop's thread (both rounds are synchronous: the loop is blocked for exactly that
long):

* health: one :class:`HealthMonitor` over a :class:`SessionRegistry` holding ``--sessions``
  connected :class:`ParticipantSession` objects (a few of them older than the stuck
  threshold, so the warning path runs), ``HealthMonitor.check()`` called ``--rounds``
  times;
* sync: one :class:`SessionSync` on a fake room holding ``--sync-sessions`` participants,
  each with a connected session, an open pipeline and a published microphone,
  ``SessionSync.validate()`` (every session checked against the room, its config
  published) called ``--rounds`` times, with the publisher drained between rounds.

Each prints p50, p99 and max in milliseconds. The loop's worst stall while persisting is
bench/persistence.py's ``max_loop_stall_ms``.

    .venv/bin/python -m bench.bookkeeping
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
import logging  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from typing import Any  # noqa: E402

from clara_voice.agent.health import HealthMonitor  # noqa: E402
from clara_voice.agent.metrics import PerformanceMetrics  # noqa: E402
from clara_voice.agent.registry import SessionRegistry  # noqa: E402
from clara_voice.agent.session import ParticipantSession, new_session_id  # noqa: E402
from clara_voice.config import load_settings  # noqa: E402
from clara_voice.logging import get_logger  # noqa: E402
from clara_voice.sync.service import SessionSync  # noqa: E402
from testkit.fakes import FakePipeline, FakeRoom  # noqa: E402

LOG = get_logger("clara_voice.bench")


def timed(round_: Callable[[], Any], rounds: int) -> dict[str, float]:
    """p50/p99/max milliseconds of ``round_`` over ``rounds`` calls (after one warm-up)."""
    round_()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        round_()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 3),
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
        "max_ms": round(times[-1], 3),
    }


def registry_of(count: int, room: FakeRoom | None = None) -> SessionRegistry:
    """``count`` connected sessions (with their participants in ``room`` if given)."""
    registry = SessionRegistry()
    old = datetime.now(UTC) - timedelta(hours=1)
    for n in range(count):
        identity = f"user-{n}"
        sid = f"PA_{n}"
        if room is not None:
            sid = room.join(identity).sid
            room.publish_track(identity)
        session = ParticipantSession(
            session_id=new_session_id(identity),
            participant_id=identity,
            participant_sid=sid,
            log=LOG,
            start_time=old if n % 1000 == 0 else datetime.now(UTC),
        )
        session.pipeline = FakePipeline(identity)
        registry.add(session)
        registry.transition(session, "connected", reason="pipeline started")
    return registry


async def health_round(sessions: int, rounds: int) -> dict[str, Any]:
    settings = load_settings()
    monitor = HealthMonitor(registry_of(sessions), PerformanceMetrics(), settings, log=LOG)
    await monitor.start()
    try:
        return {"sessions": sessions, **timed(monitor.check, rounds)}
    finally:
        await monitor.aclose()


async def sync_round(sessions: int, rounds: int) -> dict[str, Any]:
    settings = load_settings()
    room = FakeRoom("bench-room")
    registry = registry_of(sessions, room)
    sync = SessionSync(room, registry, settings, log=LOG, interval=3600, attribute_interval=0)
    await sync.start()
    try:
        await sync.drain()
        results = []
        for _ in range(rounds):
            results.append(timed(sync.validate, 1)["max_ms"])
            room.local_participant.attribute_writes.clear()
            room.local_participant.published.clear()
            await sync.drain()
        results.sort()
        return {
            "sessions": sessions,
            "p50_ms": round(statistics.median(results), 3),
            "p99_ms": round(results[min(len(results) - 1, int(len(results) * 0.99))], 3),
            "max_ms": round(results[-1], 3),
        }
    finally:
        await sync.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--sync-sessions", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    logging.getLogger("clara_voice").setLevel(logging.ERROR)  # the stuck-session warnings
    print(
        json.dumps(
            {
                "method": "one synchronous round of the real code timed with perf_counter "
                "(the loop is blocked that long); p50/p99/max over --rounds rounds",
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            }
        )
    )
    print(json.dumps({"round": "health", **await health_round(args.sessions, args.rounds)}))
    print(json.dumps({"round": "sync", **await sync_round(args.sync_sessions, args.rounds)}))


if __name__ == "__main__":
    asyncio.run(main())
