"""The Redis server of the multi-node tests (testkit/redis_server.py): Debian's
redis-server on loopback, its small protocol client, and a stop that leaves nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testkit.redis_server import (
    RedisMissingError,
    RedisReplyError,
    RedisServer,
    redis_binary,
    redis_version,
)


@pytest.fixture
def redis(tmp_path: Path) -> RedisServer:
    try:
        redis_binary()
    except RedisMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    return RedisServer(tmp_path / "redis")


def test_commands_round_trip_every_reply_kind(redis: RedisServer) -> None:
    with redis:
        assert redis.command("PING") == "PONG"
        assert redis.command("HSET", "nodes", "ND_a", "one", "ND_b", "two") == 2
        assert sorted(redis.command("HKEYS", "nodes") or []) == [b"ND_a", b"ND_b"]
        assert redis.command("HGET", "nodes", "ND_a") == b"one"
        assert redis.command("HGET", "room_node_map", "nowhere") is None
        with pytest.raises(RedisReplyError, match="unknown command"):
            redis.command("NOT-A-COMMAND")


def test_stop_ends_the_server_and_keeps_nothing_on_disk(redis: RedisServer) -> None:
    with redis:
        redis.command("SET", "k", "v")
        pid = redis.pid
        assert pid is not None
    assert redis.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    # no persistence: no snapshot, no append-only file left behind
    assert sorted(p.name for p in redis.workdir.iterdir()) == ["redis-server.log"]
    with pytest.raises(ConnectionRefusedError):
        redis.command("PING")
    redis.stop()  # twice is fine


def test_listens_on_loopback_only(redis: RedisServer) -> None:
    with redis:
        assert redis.address == f"127.0.0.1:{redis.port}"
        assert redis.command("CONFIG", "GET", "bind") == [b"bind", b"127.0.0.1"]
        assert redis.command("CONFIG", "GET", "save") == [b"save", b""]


def test_a_missing_redis_server_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RedisMissingError, match="apt-get install redis-server"):
        redis_binary()


def test_version_is_the_debian_servers() -> None:
    assert redis_version().count(".") == 2
