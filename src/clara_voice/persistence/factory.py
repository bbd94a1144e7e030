"""``build_backend(settings)``: the conversation store the settings name.

Used by the worker's entrypoint (one backend per room job) and by the operator's commands
(``outbox replay``), so that none of them needs the worker to get a store.
"""

from __future__ import annotations

from clara_voice.config import Settings
from clara_voice.persistence.base import Backend
from clara_voice.persistence.http import HttpBackend
from clara_voice.persistence.sqlite import DB_FILENAME, SQLiteBackend


def build_backend(settings: Settings) -> Backend:
    """The embedded SQLite file, the shared PostgreSQL database, or a team's backend over
    HTTP (``CLARA_BACKEND``), not yet opened: each opens on its first call."""
    if settings.backend == "http":
        assert settings.backend_url is not None  # Settings refuses http without a URL
        return HttpBackend(
            settings.backend_url, token=settings.backend_token, timeout=settings.backend_timeout
        )
    if settings.backend == "postgres":
        assert settings.database_url is not None  # Settings refuses postgres without one
        from clara_voice.persistence.postgres import PostgresBackend  # only a fleet needs it

        return PostgresBackend(
            settings.database_url,
            timeout=settings.backend_timeout,
            pool_max=settings.database_pool_max,
        )
    return SQLiteBackend(settings.data_dir / DB_FILENAME)


__all__ = ["build_backend"]
