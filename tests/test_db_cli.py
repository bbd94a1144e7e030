"""``python -m clara_voice db {migrate,status}`` on the real stores: a PostgreSQL server the
harness starts, and a SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from clara_voice import _cli, db_cli
from clara_voice.config import load_settings
from clara_voice.persistence import _postgres_schema, sqlite
from testkit.postgres import PostgresServer
from testkit.worker import free_port, run_clara


def db(capsys: pytest.CaptureFixture[str], *args: str, **settings: object) -> tuple[int, str]:
    """Run the command in this process: its exit code and everything it printed."""
    code = db_cli.main(_cli.db_parser().parse_args(args), load_settings(**settings))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_migrate_and_status_of_a_postgres_database(
    capsys: pytest.CaptureFixture[str], postgres_server: PostgresServer, postgres_dsn: SecretStr
) -> None:
    url = postgres_dsn.get_secret_value()
    known = _postgres_schema.SCHEMA_VERSION
    where = f"127.0.0.1:{postgres_server.port}/{url.rpartition('/')[2]}"

    code, out = db(capsys, "status", backend="postgres", database_url=url)
    assert (code, out) == (
        1,
        f"{where}: schema version 0, this build's {known}: behind: "
        "a worker migrates it when it opens it, or run `db migrate`\n",
    )

    code, out = db(capsys, "migrate", backend="postgres", database_url=url)
    assert (code, out) == (0, f"{where}: migrated from version 0 to version {known}\n")
    code, out = db(capsys, "migrate", backend="postgres", database_url=url)
    assert (code, out) == (0, f"{where}: already at version {known}\n")

    code, out = db(capsys, "status", backend="postgres", database_url=url)
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == f"{where}: schema version {known}, this build's {known}: up to date"
    assert [line.split()[:2] for line in lines[1:]] == [
        ["step", str(n)] for n in range(1, known + 1)
    ]
    assert postgres_server.password not in out


def test_a_database_newer_than_the_build_is_reported_and_left_alone(
    capsys: pytest.CaptureFixture[str], postgres_server: PostgresServer, postgres_dsn: SecretStr
) -> None:
    url = postgres_dsn.get_secret_value()
    assert db(capsys, "migrate", backend="postgres", database_url=url)[0] == 0
    newer = _postgres_schema.SCHEMA_VERSION + 1
    postgres_server.execute(
        f"INSERT INTO clara_schema_migrations (version) VALUES ({newer})", url.rpartition("/")[2]
    )

    code, out = db(capsys, "status", backend="postgres", database_url=url)
    assert code == 1 and "newer than this build" in out
    code, out = db(capsys, "migrate", backend="postgres", database_url=url)
    assert code == 1
    assert out.startswith(f"clara_voice db: the database's schema is at version {newer}, newer")


def test_an_unreachable_database_is_one_line_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"postgresql://clara:unreachable-pw-5RT@127.0.0.1:{free_port()}/clara"
    for command in ("status", "migrate"):
        code, out = db(capsys, command, backend="postgres", database_url=url, backend_timeout=2)
        assert code == 1
        assert out.startswith("clara_voice db: postgres out of reach"), out
        assert out.count("\n") == 1 and "unreachable-pw-5RT" not in out


def test_migrate_and_status_of_the_sqlite_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    path = data / sqlite.DB_FILENAME
    known = sqlite.SCHEMA_VERSION
    code, out = db(capsys, "status", data_dir=data)
    assert (code, out.split(": ", 1)[1]) == (
        1,
        f"schema version 0, this build's {known}: behind:"
        " a worker migrates it when it opens it, or run"
        " `db migrate`\n",
    )
    assert not path.exists()  # status changes nothing
    assert db(capsys, "migrate", data_dir=data) == (
        0,
        f"{path}: migrated from version 0 to version {known}\n",
    )
    assert db(capsys, "status", data_dir=data)[0] == 0


def test_the_http_backend_has_no_schema_here(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = db(capsys, "status", backend="http", backend_url="http://127.0.0.1:9/api")
    assert code == 2 and "CLARA_BACKEND=http" in out


def test_the_command_runs_without_provider_keys(tmp_path: Path, postgres_dsn: SecretStr) -> None:
    """``python -m clara_voice db`` checks its settings, not the providers' keys."""
    result = run_clara(
        tmp_path,
        ["db", "migrate"],
        CLARA_BACKEND="postgres",
        CLARA_DATABASE_URL=postgres_dsn.get_secret_value(),
    )
    assert result.returncode == 0, result.stderr
    assert "migrated from version 0" in result.stdout
