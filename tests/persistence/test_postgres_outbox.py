"""The durable outbox in front of a real PostgreSQL server: what was acknowledged while the
database was down is delivered when it is back, a record the database refuses goes to the
dead letters without holding up the rest, and ``outbox replay`` delivers dead letters to
it (the operator's command, run here in-process)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import SecretStr

from clara_voice import _cli, outbox_cli
from clara_voice.config import load_settings
from clara_voice.persistence.dead_letters import dead_letters
from clara_voice.persistence.outbox import OUTBOX_DIRNAME
from clara_voice.persistence.postgres import PostgresBackend
from testkit.pipeline import until
from testkit.postgres import PostgresServer, query
from tests.persistence.records import turn
from tests.persistence.test_outbox import drained, fast
from tests.test_outbox_cli import leave_dead_letters


async def test_records_acknowledged_while_postgres_is_down_arrive_when_it_is_back(
    data: Path, postgres_server: PostgresServer, postgres_dsn: SecretStr
) -> None:
    async with (
        PostgresBackend(postgres_dsn, timeout=2) as backend,
        fast(data, backend, deliver_timeout=5) as outbox,
    ):
        await outbox.put(turn(0))
        await drained(outbox)
        postgres_server.stop()
        try:
            for seq in range(1, 21):
                await outbox.put(turn(seq))  # acknowledged: committed to the outbox file
            await until(
                lambda: not outbox.stats.backend_up, timeout=10, what="the outage to be seen"
            )
            assert outbox.pending_count() == 20
        finally:
            postgres_server.start()
        await drained(outbox, timeout=20)
        assert outbox.stats.backend_up and outbox.stats.dead_lettered == 0
    stored = await query(
        postgres_dsn.get_secret_value(), "SELECT seq FROM messages ORDER BY at, seq"
    )
    assert [seq for (seq,) in stored] == list(range(21))


async def test_a_record_postgres_refuses_is_dead_lettered_and_the_rest_flows(
    data: Path, postgres_dsn: SecretStr
) -> None:
    async with PostgresBackend(postgres_dsn) as backend, fast(data, backend) as outbox:
        await outbox.put(turn(0))
        await outbox.put(turn(1, text="a NUL \x00 PostgreSQL cannot store"))
        await outbox.put(turn(2))
        await drained(outbox)
        assert outbox.stats.dead_lettered == 1 and outbox.stats.delivered == 2
    stored = await query(postgres_dsn.get_secret_value(), "SELECT record_key FROM messages")
    assert sorted(key for (key,) in stored) == ["turn:s1:0", "turn:s1:2"]

    [letter] = list(dead_letters(data / OUTBOX_DIRNAME))
    assert letter.key == "turn:s1:1" and "22021" in letter.error


def test_outbox_replay_delivers_dead_letters_to_postgres(
    data: Path, postgres_dsn: SecretStr, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(leave_dead_letters(data))  # turns 1 and 3 of s1, refused by another backend
    settings = load_settings(data_dir=data, backend="postgres", database_url=postgres_dsn)
    assert outbox_cli.main(_cli.outbox_parser().parse_args(["replay"]), settings) == 0
    assert capsys.readouterr().out.splitlines() == ["delivered turn:s1:1", "delivered turn:s1:3"]
    assert list(dead_letters(data / OUTBOX_DIRNAME)) == []

    async def history() -> list[str]:
        async with PostgresBackend(postgres_dsn) as backend:
            stored = await backend.get_recent_messages("conv-s1", 10, participant="user-s1")
        return [m.text for m in stored]

    assert asyncio.run(history()) == ["s1 says 1", "s1 says 3"]
