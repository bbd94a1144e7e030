"""Persistence: where conversation turns and session summaries go (seed 004).

``base.py`` defines the records and the :class:`Backend` protocol; ``outbox.py`` the
durable outbox every write goes through; ``sqlite.py`` the embedded default store (one
machine), ``postgres.py`` the store a fleet of workers shares, and ``http.py`` a team's own
backend over HTTP; ``factory.py`` builds the one the settings name.
"""

from __future__ import annotations

from clara_voice.persistence.base import (
    Backend,
    BackendError,
    OutboxError,
    OutboxRecord,
    RecordKind,
    StoredMessage,
)

__all__ = [
    "Backend",
    "BackendError",
    "OutboxError",
    "OutboxRecord",
    "RecordKind",
    "StoredMessage",
]
