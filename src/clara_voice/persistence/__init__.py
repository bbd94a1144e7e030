"""Persistence: where conversation turns and session summaries go (seed 004).

The :class:`Backend` protocol is the seam ClaraVoiceAgent writes through; the SQLite and
HTTP implementations and the durable outbox arrive with the persistence issue.
"""

from __future__ import annotations

from typing import Protocol


class Backend(Protocol):
    """A conversation store. ``aclose`` flushes and releases it; idempotent."""

    async def aclose(self) -> None: ...


__all__ = ["Backend"]
