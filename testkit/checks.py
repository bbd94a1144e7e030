"""What the end-to-end tests read off the worker: log lines by event and field, the
Prometheus gauges, and the conversation store."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clara_voice.persistence.sqlite import DB_FILENAME
from clara_voice.sync.protocol import SessionConfig
from clara_voice.sync.service import SessionSync
from testkit.human import Human
from testkit.worker import LogLine, WorkerProcess


def event(name: str, **fields: Any) -> Callable[[LogLine], bool]:
    """A log-line predicate: ``event == name`` and every field equal."""
    return lambda line: (
        line.get("event") == name and all(line.get(k) == v for k, v in fields.items())
    )


def gauge(metrics: str, name: str) -> float | None:
    """The value of an unlabelled series ``name`` in a Prometheus text page."""
    match = re.search(rf"^{re.escape(name)} ([0-9.eE+-]+)$", metrics, re.MULTILINE)
    return None if match is None else float(match.group(1))


async def wait_gauge(
    worker: WorkerProcess, name: str, value: float, *, timeout: float = 10.0
) -> None:
    """Wait until the worker's /metrics shows ``name == value``. The endpoint offers no
    change event, so this reads it every 100 ms until ``timeout``."""
    deadline = time.monotonic() + timeout
    seen: float | None = None
    while time.monotonic() < deadline:
        status, text = await worker.metrics()
        seen = gauge(text, name) if status == 200 else None
        if seen == value:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} stayed {seen}, expected {value}\n{worker.tail()}")


def store_rows(data_dir: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of the worker's SQLite store (``CLARA_DATA_DIR``)."""
    with sqlite3.connect(data_dir / DB_FILENAME) as db:
        return db.execute(sql, params).fetchall()


async def wait_rows(
    data_dir: Path, sql: str, *params: Any, count: int, timeout: float = 10.0
) -> list[tuple[Any, ...]]:
    """The store's rows once there are ``count`` of them. The outbox delivers in the
    background and the store offers no change event, so this reads it every 100 ms."""
    deadline = time.monotonic() + timeout
    rows: list[tuple[Any, ...]] = []
    while time.monotonic() < deadline:
        if (data_dir / DB_FILENAME).exists():
            rows = store_rows(data_dir, sql, *params)
            if len(rows) >= count:
                return rows
        await asyncio.sleep(0.1)
    raise AssertionError(f"the store holds {len(rows)} rows, expected {count}: {rows}")


async def joined(worker: WorkerProcess, *humans: Human) -> list[LogLine]:
    """Each human joins, in order; the worker's ``session initialized`` line for each."""
    for human in humans:
        await human.join()
    return [
        await worker.wait_line(
            event("session initialized", participant=h.identity), f"{h.identity}'s session"
        )
        for h in humans
    ]


async def talk(human: Human, text: str, reply: str) -> None:
    """``human`` says ``text`` and waits for Clara's ``reply``: its transcript and audio."""
    utterance = human.say(text)
    await human.wait_until(utterance.ended.is_set, "the utterance was sent")
    await human.wait_until(
        lambda: any(t.text == reply for t in human.agent_transcripts()),
        f"the reply {reply!r}",
        timeout=20,
    )
    await human.wait_until(
        lambda: human.agent_sound_after(utterance.ended_at or 0.0), "the reply audio"
    )


def config_of(sync: SessionSync, session_id: str) -> SessionConfig | None:
    """The config session sync keeps for ``session_id`` (``None`` once it ended): what the
    agent publishes as that session's ``clara.session.<identity>`` attribute."""
    record = sync._records.get(session_id)
    return None if record is None else record.config
