"""Settings: the one configuration object of clara_voice.

Built once when the process starts (from the environment and an optional ``.env`` file),
validated there, and passed down explicitly. LiveKit's own variables keep their standard
names (``LIVEKIT_URL``, ``LIVEKIT_API_KEY``, ``LIVEKIT_API_SECRET``); everything of ours
shares the ``CLARA_`` prefix. An invalid value stops the service at start with one line
per bad variable (see :func:`load_settings`), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CLARA_"

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

PositiveSeconds = Annotated[float, Field(gt=0)]


class SettingsError(Exception):
    """Raised by :func:`load_settings`; ``str()`` is one line per invalid variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Settings(BaseSettings):
    """Every knob of the service. Field docs are the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        populate_by_name=False,
    )

    # -- LiveKit (standard names, `livekit-server --dev` defaults) --------------------------
    livekit_url: str = Field(
        default="ws://localhost:7880",
        validation_alias="LIVEKIT_URL",
        description="WebSocket URL of the LiveKit server or Cloud project.",
    )
    livekit_api_key: str = Field(
        default="devkey",
        validation_alias="LIVEKIT_API_KEY",
        min_length=1,
        description="API key the worker authenticates with.",
    )
    livekit_api_secret: SecretStr = Field(
        default=SecretStr("secret"),
        validation_alias="LIVEKIT_API_SECRET",
        description="API secret the worker signs its tokens with.",
    )

    # -- worker -----------------------------------------------------------------------------
    log_level: LogLevel = Field(default="INFO", description="Log level of clara_voice and livekit.")
    log_format: LogFormat = Field(
        default="auto",
        description="`json`, `console`, or `auto` (JSON for `start`, readable for `dev`).",
    )
    http_host: str = Field(
        default="0.0.0.0",
        description="Interface of the health endpoint (`127.0.0.1` to keep it local).",
    )
    http_port: int = Field(
        default=8081,
        ge=0,
        le=65535,
        description="Port of the worker's health endpoint (`GET /` → 200 or 503).",
    )
    livekit_max_retry: int = Field(
        default=16,
        ge=0,
        description="Retries of the LiveKit connection before the worker gives up and exits 1.",
    )
    drain_timeout: int = Field(
        default=300,
        ge=0,
        description="Seconds a SIGTERM waits for running jobs to finish before closing them.",
    )
    num_idle_processes: int | None = Field(
        default=None,
        ge=0,
        description="Warm job processes kept ready (default: livekit's, the CPU count).",
    )

    # -- sessions ---------------------------------------------------------------------------
    health_check_interval: PositiveSeconds = Field(
        default=30.0, description="Seconds between health checks of each room agent."
    )
    stuck_session_threshold: PositiveSeconds = Field(
        default=1800.0, description="Age in seconds after which a session is reported as stuck."
    )
    reconnect_grace_period: PositiveSeconds = Field(
        default=30.0,
        description="Seconds a dropped participant's session waits for the same identity.",
    )
    max_reconnection_attempts: int = Field(
        default=5, ge=1, description="Pipeline re-establish attempts before a session is closed."
    )
    data_dir: Path = Field(
        default=Path("./data"), description="Where the embedded store and outbox live."
    )

    @field_validator("livekit_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("ws", "wss", "http", "https") or not parsed.netloc:
            raise ValueError("must be a ws://, wss://, http:// or https:// URL with a host")
        return value

    @field_validator("livekit_api_secret")
    @classmethod
    def _check_secret(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("must not be empty")
        return value

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable that sets ``field``."""
        info = cls.model_fields[field]
        alias = info.validation_alias
        return alias if isinstance(alias, str) else f"{ENV_PREFIX}{field.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Build :class:`Settings`, translating validation errors into :class:`SettingsError`.

    ``overrides`` are keyword values (by field name) that win over the environment; the
    tests and the benchmarks use them.
    """
    init = {_init_key(name): value for name, value in overrides.items()}
    try:
        return Settings(**init)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _init_key(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else field


def _describe(exc: ValidationError) -> list[str]:
    env_for_loc = {name: Settings.env_name(name) for name in Settings.model_fields}
    env_for_loc.update({env: env for env in env_for_loc.values()})
    problems = []
    for error in exc.errors(include_url=False):
        key = str(error["loc"][0]) if error["loc"] else "?"
        variable = env_for_loc.get(key, key.upper())
        message = error["msg"].removeprefix("Value error, ")
        given = error.get("input")
        shown = "" if isinstance(given, dict) or "secret" in variable.lower() else f"={given!r}"
        problems.append(f"invalid setting {variable}{shown}: {message}")
    return problems
