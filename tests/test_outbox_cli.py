"""``python -m clara_voice outbox {status,dead-letters,replay}`` on real outbox files.

Defect (issue 11): dead letters could only be read with sqlite3, and nothing replayed them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clara_voice.persistence.sqlite import DB_FILENAME, SQLiteBackend
from testkit.worker import run_clara
from tests.persistence.outbox_writer_proc import turn
from tests.persistence.test_outbox import FakeBackend, drained, fast


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


async def leave_dead_letters(data: Path) -> None:
    """Two dead letters (turns 1 and 3 of s1) and two records waiting (s2's), in the file
    of an ended process (the second outbox adopted the first one's file)."""
    refusing = FakeBackend()
    refusing.refused = {"turn:s1:1", "turn:s1:3"}
    async with fast(data, refusing) as outbox:
        for i in range(5):
            await outbox.put(turn("s1", i))
        await drained(outbox)
    async with fast(data, FakeBackend(mode="down"), flush_timeout=0) as outbox:
        for i in range(2):
            await outbox.put(turn("s2", i))


def outbox(data: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_clara(data.parent, ["outbox", *args], CLARA_DATA_DIR=str(data), **env)


def table(result: subprocess.CompletedProcess[str]) -> list[list[str]]:
    assert result.returncode == 0, result.stderr
    return [line.split() for line in result.stdout.splitlines()[1:]]


def test_status_of_an_empty_outbox(data: Path) -> None:
    result = outbox(data, "status")
    assert table(result) == [["total", "0", "0", "0", "0"]]


async def test_status_lists_each_file_its_waiting_records_and_dead_letters(data: Path) -> None:
    await leave_dead_letters(data)
    [row, total] = table(outbox(data, "status"))
    assert row[1:3] == ["orphan", "2"] and row[4] == "2"
    assert int(row[3]) > 0  # the waiting records' bytes
    assert total == ["total", "1", "2", row[3], "2"]


def test_status_tells_a_running_workers_file_from_an_orphan(data: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "tests.persistence.outbox_writer_proc", str(data), "1", "3"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ) as writer:
        try:
            assert writer.stdout is not None
            for _ in range(3):  # each key is printed once its put is acknowledged
                assert writer.stdout.readline().startswith("turn:s0:")
            [row, _total] = table(outbox(data, "status"))
            assert row[1:3] == ["live", "3"]
        finally:
            writer.kill()
    [row, _total] = table(outbox(data, "status"))
    assert row[1:3] == ["orphan", "3"]


async def test_dead_letters_are_listed_as_json_lines(data: Path) -> None:
    await leave_dead_letters(data)
    result = outbox(data, "dead-letters")
    assert result.returncode == 0, result.stderr
    letters = [json.loads(line) for line in result.stdout.splitlines()]
    assert [letter["key"] for letter in letters] == ["turn:s1:1", "turn:s1:3"]
    first = letters[0]
    assert first["kind"] == "turn"
    assert first["payload"] == turn("s1", 1).payload
    assert "422" in first["error"]
    assert first["created_at"] and first["failed_at"] and first["file"]


async def test_replay_delivers_to_the_backend_and_keeps_what_it_refuses(data: Path) -> None:
    await leave_dead_letters(data)

    # the backend is unreachable: nothing leaves the dead letters, exit 1
    down = outbox(data, "replay", CLARA_BACKEND="http", CLARA_BACKEND_URL="http://127.0.0.1:9/api")
    assert down.returncode == 1
    assert "kept turn:s1:1" in down.stderr and "kept turn:s1:3" in down.stderr
    assert "replayed 0 of 2 dead letters" in down.stderr

    # one key, to the embedded store
    one = outbox(data, "replay", "turn:s1:1")
    assert one.returncode == 0, one.stderr
    assert one.stdout.splitlines() == ["delivered turn:s1:1"]
    listed = outbox(data, "dead-letters").stdout.splitlines()
    assert [json.loads(line)["key"] for line in listed] == ["turn:s1:3"]

    missing = outbox(data, "replay", "turn:nope:0")
    assert missing.returncode == 1
    assert "no dead letter turn:nope:0" in missing.stderr

    rest = outbox(data, "replay")
    assert rest.returncode == 0, rest.stderr
    assert outbox(data, "dead-letters").stdout == ""

    store = SQLiteBackend(data / DB_FILENAME)
    try:
        stored = await store.get_recent_messages("conv-s1", 10, participant="user-s1")
    finally:
        await store.aclose()
    assert [m.text for m in stored] == ["s1 says 1", "s1 says 3"]


def test_a_bad_command_is_a_usage_error(data: Path) -> None:
    result = outbox(data, "purge")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
