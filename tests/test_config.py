"""Settings: defaults, sources, and the one-line errors that stop the service at start."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clara_voice.config import Settings, SettingsError, load_settings
from testkit.worker import start_clara

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_the_livekit_dev_server_values() -> None:
    settings = load_settings()
    assert settings.livekit_url == "ws://localhost:7880"
    assert settings.livekit_api_key == "devkey"
    assert settings.livekit_api_secret.get_secret_value() == "secret"
    assert settings.health_check_interval == 30
    assert settings.stuck_session_threshold == 30 * 60


def test_livekit_variables_keep_their_names_and_ours_share_a_prefix() -> None:
    names = {Settings.env_name(field) for field in Settings.model_fields}
    standard = {n for n in names if not n.startswith("CLARA_")}
    assert standard == {
        "LIVEKIT_URL",
        "LIVEKIT_API_KEY",
        "LIVEKIT_API_SECRET",
        "OPENAI_API_KEY",
        "DEEPGRAM_API_KEY",
        # the name scripts/livekit-server and the tests already give the server binary
        "LIVEKIT_SERVER_BIN",
    }


def test_environment_and_dotenv_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "LIVEKIT_URL=wss://example.livekit.cloud\nCLARA_HTTP_PORT=9000\n"
    )
    monkeypatch.setenv("CLARA_HTTP_PORT", "9100")  # the environment wins over .env
    settings = load_settings()
    assert settings.livekit_url == "wss://example.livekit.cloud"
    assert settings.http_port == 9100


def test_the_secret_never_shows_in_repr() -> None:
    settings = load_settings(livekit_api_secret="s3cr3t-value")
    assert "s3cr3t-value" not in repr(settings)
    assert "s3cr3t-value" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LIVEKIT_URL", "localhost:7880", "must be a ws://, wss://, http:// or https:// URL"),
        ("CLARA_HEALTH_CHECK_INTERVAL", "soon", "valid number"),
        ("CLARA_HEALTH_CHECK_INTERVAL", "0", "greater than 0"),
        ("CLARA_HTTP_PORT", "70000", "less than or equal to 65535"),
        ("CLARA_LOG_LEVEL", "LOUD", "'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"),
        ("CLARA_MAX_RECONNECTION_ATTEMPTS", "0", "greater than or equal to 1"),
    ],
)
def test_an_invalid_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    (line,) = caught.value.problems
    assert line.startswith(f"invalid setting {variable}={value!r}: ")
    assert expected in line


def test_an_empty_secret_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_API_SECRET", "")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert caught.value.problems == ["invalid setting LIVEKIT_API_SECRET: must not be empty"]


def test_the_service_stops_at_start_with_one_line_per_bad_variable(tmp_path: Path) -> None:
    result = start_clara(tmp_path, CLARA_HEALTH_CHECK_INTERVAL="soon", LIVEKIT_URL="localhost")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("clara_voice: invalid setting LIVEKIT_URL='localhost'")
    assert lines[1].startswith("clara_voice: invalid setting CLARA_HEALTH_CHECK_INTERVAL='soon'")
    assert "Traceback" not in result.stderr


def test_env_example_lists_every_variable_with_a_comment() -> None:
    text = (REPO / ".env.example").read_text()
    listed = re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.M)
    assert sorted(listed) == sorted({Settings.env_name(f) for f in Settings.model_fields})
    lines = text.splitlines()
    for name in listed:
        index = next(i for i, line in enumerate(lines) if re.match(rf"^#?\s*{name}=", line))
        comment = lines[index - 1] if index else ""
        assert comment.startswith("# "), name
        assert not re.match(r"^#\s*[A-Z][A-Z0-9_]+=", comment), name


def test_the_readme_documents_every_variable() -> None:
    readme = (REPO / "README.md").read_text()
    for field in Settings.model_fields:
        assert f"| `{Settings.env_name(field)}` |" in readme, Settings.env_name(field)


# -- the PostgreSQL store ---------------------------------------------------------------------

DB_PASSWORD = "pg-password-in-url-4KX"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"mysql://clara:{DB_PASSWORD}@db.example/clara", "must be a postgresql://"),
        (f"postgresql://clara:{DB_PASSWORD}@/clara", "must name a host"),
        (f"postgresql://clara:{DB_PASSWORD}@db.example", "must name a database"),
        (f"postgresql://clara:{DB_PASSWORD}@db.example:99999/clara", "port that is not a number"),
        (f"postgresql://clara:{DB_PASSWORD}@db.example/clara#x", "must not have a #fragment"),
        (f"clara:{DB_PASSWORD}@db.example/clara", "must be a postgresql://"),
    ],
    ids=["scheme", "host", "database", "port", "fragment", "no-scheme"],
)
def test_a_bad_database_url_names_the_variable_and_never_shows_the_url(
    url: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(backend="postgres", database_url=url)
    (line,) = caught.value.problems
    assert line.startswith("invalid setting CLARA_DATABASE_URL: "), line
    assert expected in line
    assert DB_PASSWORD not in line and "db.example" not in line


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://clara:pw@db.example:5432/clara",
        "postgres://clara@db.example/clara?sslmode=require",
        "postgresql:///clara?host=/run/postgresql",
        "postgresql://clara@db-a:5432,db-b:5432/clara?target_session_attrs=read-write",
    ],
    ids=["tcp", "postgres-scheme", "socket", "several-hosts"],
)
def test_a_database_url_names_a_host_or_socket_and_a_database(url: str) -> None:
    settings = load_settings(backend="postgres", database_url=url)
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == url
    assert url not in repr(settings)


def test_postgres_without_a_database_url_is_refused_naming_both_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLARA_BACKEND", "postgres")
    monkeypatch.setenv("CLARA_DATABASE_URL", "")  # empty counts as unset
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert caught.value.problems == [
        "invalid settings: CLARA_BACKEND=postgres needs CLARA_DATABASE_URL"
    ]


def test_the_database_password_is_hidden_in_every_line_once_loaded() -> None:
    """The URL is a secret as a whole, and its password alone too (a driver's message
    may quote it without the rest of the URL)."""
    from clara_voice._redact import redact

    load_settings(
        backend="postgres", database_url=f"postgresql://clara:{DB_PASSWORD}@db.example/clara"
    )
    assert DB_PASSWORD not in redact(f"authentication failed with {DB_PASSWORD}")
