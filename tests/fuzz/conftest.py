"""The fuzz and fault pass: how many examples, and the watch every fuzz run is under.

Each module fuzzes one surface a client or a backend controls, with hypothesis, through the
code that really handles it; together they run ``BUDGET`` examples in CI (7,000; with the
sync and reconnection fuzz tests, 18,000).
``CLARA_FUZZ_SCALE=20`` multiplies every budget for a release run (see docs/testing.md).

:class:`Watch` asserts what every surface must keep, whatever it is sent:

- no exception escapes: none reaches the event loop's exception handler, and no log record
  carries a traceback (livekit's event emitter logs "failed to emit event" with one when a
  handler raises);
- memory stays flat: what the service's code (``clara_voice`` and ``livekit``) holds,
  traced with tracemalloc over the second half of the run and measured at nine checkpoints,
  grows by less than ``LEAK_BYTES`` per example (the least-squares slope).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st

SCALE = float(os.environ.get("CLARA_FUZZ_SCALE", "1"))
BUDGET = {"room": 2000, "chat": 2000, "push_to_talk": 1500, "backend": 1500}
"""Examples per surface in CI: 7,000 here, and 11,000 more in the sync and reconnection
fuzz tests (tests/sync, tests/agent) over the same RPCs, attributes and room events."""
LEAK_BYTES = 64
"""A leak: what the service's code holds growing by this many bytes per example or more
(over the 700 examples or more between the first and the last checkpoint)."""
_CHECKPOINTS = 9
_TRACED = (
    tracemalloc.Filter(True, "*/clara_voice/*"),
    tracemalloc.Filter(True, "*/livekit/*"),
)


def budget(surface: str) -> hsettings:
    """Hypothesis settings for ``surface``: its examples times ``CLARA_FUZZ_SCALE``."""
    return hsettings(
        max_examples=max(1, round(BUDGET[surface] * SCALE)),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A scaled run takes longer: each fuzz test's timeout grows with it."""
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.timeout(round(300 * max(1.0, SCALE))))


def deeply_nested(depth: int = 50_000) -> str:
    """JSON nested past the interpreter's recursion limit (``json.loads`` raises
    ``RecursionError`` on it, not ``ValueError``)."""
    return "[" * depth + "]" * depth


def texts(**kwargs: Any) -> st.SearchStrategy[str]:
    """Text as the SDK delivers it (protobuf strings: UTF-8, so no lone surrogates)."""
    return st.text(st.characters(exclude_categories=("Cs",)), **kwargs)


def long_texts(**kwargs: Any) -> st.SearchStrategy[str]:
    """Text up to tens of thousands of characters, made cheaply (a short text repeated)."""
    return st.builds(lambda s, n: s * n, texts(min_size=1, max_size=3), st.integers(1, 30_000))


_WATCHED_LOGGERS = ("clara_voice", "livekit", "asyncio")


class Tracebacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


class Watch:
    """Exceptions that escape, and memory, over one fuzz run of ``examples`` examples. Use
    it as a context manager, in the test's body.

    Memory is traced over the second half of the run only (tracing slows every allocation
    down): when tracing starts, ``fill`` (if given) fills what the service keeps up to a
    bound, so that entries made before tracing and replaced later do not look like growth;
    ``quiesce`` (if given) lets the work in flight finish before each measure.

    Meanwhile the watched loggers hand their records to the watch only: pytest keeps every
    record it captures until the test ends, which would look like memory the service holds
    (pytest attaches its capture to the loggers that do not propagate when the test's call
    starts, so this must happen in the body, not in a fixture)."""

    def __init__(
        self,
        runner: asyncio.Runner,
        examples: int,
        *,
        quiesce: Callable[[], None] | None = None,
        fill: Callable[[], None] | None = None,
    ) -> None:
        self.examples = examples
        self.count = 0
        self.loop_errors: list[dict[str, Any]] = []
        self.tracebacks = Tracebacks()
        self._loggers = [logging.getLogger(name) for name in _WATCHED_LOGGERS]
        self.quiesce = quiesce or (lambda: None)
        self.fill = fill or (lambda: None)
        self._half = examples // 2
        step = max(1, (examples - self._half) // _CHECKPOINTS)
        self._checkpoints = {self._half + k * step for k in range(1, _CHECKPOINTS)}
        self._sizes: list[tuple[int, int]] = []
        self._first: tracemalloc.Snapshot | None = None
        self._last: tracemalloc.Snapshot | None = None
        runner.get_loop().set_exception_handler(lambda _, context: self.loop_errors.append(context))

    def __enter__(self) -> Watch:
        for logger in self._loggers:
            logger.addHandler(self.tracebacks)
            logger.propagate = False
        return self

    def __exit__(self, *_: object) -> None:
        for logger in self._loggers:
            logger.removeHandler(self.tracebacks)
            logger.propagate = True
        if tracemalloc.is_tracing():
            tracemalloc.stop()

    def example(self) -> None:
        """Call once per example: memory is traced from the half of the run, and measured
        at checkpoints after it."""
        self.count += 1
        if self.count == self._half:
            self.quiesce()
            tracemalloc.start()
            self.fill()
        elif self.count in self._checkpoints:
            self._measure()

    def _measure(self) -> None:
        self.quiesce()
        gc.collect()
        snapshot = tracemalloc.take_snapshot().filter_traces(_TRACED)
        self._sizes.append((self.count, sum(s.size for s in snapshot.statistics("filename"))))
        self._first = self._first or snapshot
        self._last = snapshot

    def check(self) -> None:
        """Nothing escaped so far (call after each example: hypothesis shrinks on it)."""
        assert not self.loop_errors, self.loop_errors[:3]
        if self.tracebacks.records:
            first = self.tracebacks.records[0]
            trace = logging.Formatter().formatException(first.exc_info)  # type: ignore[arg-type]
            raise AssertionError(f"{first.name}: {first.getMessage()}\n{trace}")

    def check_memory(self) -> None:
        """What the service's code holds does not grow with the examples: its size over the
        second half grows by under ``LEAK_BYTES`` per example (:func:`growth_per_example`:
        bounded caches and buffers only wobble around a level; a leak climbs)."""
        self._measure()
        tracemalloc.stop()
        assert len(self._sizes) >= 3, "the run ended before its second half"
        slope = growth_per_example(self._sizes)
        assert self._first is not None and self._last is not None
        top = "\n".join(str(s) for s in self._last.compare_to(self._first, "lineno")[:8])
        assert slope < LEAK_BYTES, (
            f"memory grows by {slope:.0f} bytes per example ({self._sizes}):\n{top}"
        )


def growth_per_example(sizes: Sequence[tuple[int, int]]) -> float:
    """The growth of ``(example, bytes)`` measures, in bytes per example: the median of the
    slopes between every two measures (Theil-Sen). A leak climbs between every two of them;
    an allocation that lives for a moment around one or two checkpoints (a response body
    in flight, a buffer not yet collected) moves only the slopes that touch those, which
    a least-squares line would follow (it failed runs that ended back at the level)."""
    slopes = sorted(
        (y2 - y1) / (x2 - x1)
        for (x1, y1), (x2, y2) in itertools.combinations(sorted(sizes), 2)
        if x2 != x1
    )
    if not slopes:
        raise ValueError("need measures at two different examples at least")
    middle = len(slopes) // 2
    return slopes[middle] if len(slopes) % 2 else (slopes[middle - 1] + slopes[middle]) / 2
