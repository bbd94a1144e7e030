"""build_backend: the store the settings name, built without touching it."""

from __future__ import annotations

from pathlib import Path

from clara_voice.config import load_settings
from clara_voice.persistence.factory import build_backend
from clara_voice.persistence.http import HttpBackend
from clara_voice.persistence.postgres import PostgresBackend
from clara_voice.persistence.sqlite import DB_FILENAME, SQLiteBackend


async def test_each_backend_setting_builds_its_store(tmp_path: Path) -> None:
    sqlite = build_backend(load_settings(data_dir=tmp_path / "data"))
    assert isinstance(sqlite, SQLiteBackend)
    assert sqlite.path == (tmp_path / "data" / DB_FILENAME).absolute()

    http = build_backend(load_settings(backend="http", backend_url="http://127.0.0.1:9/api/"))
    assert isinstance(http, HttpBackend)
    assert http.base_url == "http://127.0.0.1:9/api"

    # nothing listens at port 9: building is not connecting
    postgres = build_backend(
        load_settings(
            backend="postgres",
            database_url="postgresql://clara:a-password-9QZ@127.0.0.1:9/clara",
            database_pool_max=3,
        )
    )
    assert isinstance(postgres, PostgresBackend)
    assert postgres.where == "127.0.0.1:9/clara"  # how logs name it: no credentials

    for backend in (sqlite, http, postgres):
        await backend.aclose()
    assert not (tmp_path / "data").exists()
