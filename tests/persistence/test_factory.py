"""build_backend: the store the settings name, built without touching it, and used by a
room job."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from clara_voice.config import load_settings
from clara_voice.persistence.factory import build_backend
from clara_voice.persistence.http import HttpBackend
from clara_voice.persistence.postgres import PostgresBackend
from clara_voice.persistence.sqlite import DB_FILENAME, SQLiteBackend
from testkit.fakes import FakeRoom
from testkit.pipeline import TURN_TIMEOUT, running_harness
from testkit.postgres import query


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


async def test_a_room_job_stores_its_conversation_in_postgres_when_told_to(
    tmp_path: Path, postgres_dsn: SecretStr
) -> None:
    """The whole path a worker's job takes (agent → recorder → outbox → the store the
    settings name), with a real pipeline on loopback providers, into a real PostgreSQL."""
    url = postgres_dsn.get_secret_value()
    async with running_harness(
        FakeRoom(),
        tmp_path / "data",
        settings_for=lambda *_: {"backend": "postgres", "database_url": url},
        persist=True,
    ) as harness:
        await harness.join("carol", "text")
        harness.room.send_text("carol", "Are you there?")
        reply = await harness.media["carol"].text.next_reply(timeout=TURN_TIMEOUT)
    # closing the job flushed its outbox into the database
    stored = await query(url, "SELECT participant, role, text FROM messages ORDER BY at, seq")
    assert stored[:2] == [("carol", "user", "Are you there?"), ("carol", "assistant", reply)]
    assert await query(url, "SELECT participant, event FROM participant_events") == [
        ("carol", "connected")
    ]
    assert await query(url, "SELECT participant, message_count FROM sessions") == [
        ("carol", len(stored))
    ]
