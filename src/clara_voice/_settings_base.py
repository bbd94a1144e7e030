"""The first part of :class:`~clara_voice.config.Settings`: how settings are read, and the
service's own settings (LiveKit, the worker process, the sessions). The rest, and every
check across fields, is in :mod:`clara_voice.config`; one class is split in two files only
to keep each short.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CLARA_"

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
PositiveSeconds = Annotated[float, Field(gt=0)]


class ServiceSettings(BaseSettings):
    """LiveKit, the worker and the sessions (the fields come first in the README table)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        populate_by_name=False,
    )

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable that sets ``field``."""
        info = cls.model_fields[field]
        alias = info.validation_alias
        return alias if isinstance(alias, str) else f"{ENV_PREFIX}{field.upper()}"

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
    job_shutdown_timeout: PositiveSeconds = Field(
        default=30.0,
        description="Seconds a closing job gets to end its sessions and flush the outbox "
        "before it is killed.",
    )
    num_idle_processes: int | None = Field(
        default=None,
        ge=0,
        description="Warm job processes kept ready (default: livekit's, the CPU count).",
    )
    load_threshold: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Load from which the worker takes no new jobs: the largest of its own "
        "processes' CPU share, its sessions over `CLARA_MAX_SESSIONS`, 1 while an agent is in "
        "trouble (default: livekit's, 0.7 with `start`).",
    )
    max_sessions: int | None = Field(
        default=None,
        ge=1,
        description="Sessions one worker holds at full load (default: 5 per CPU it is "
        "given, at least 2).",
    )
    agent_name: str = Field(
        default="clara",
        pattern=r"^[A-Za-z0-9._-]{0,64}$",
        description="The agent name workers register with: LiveKit dispatches them explicitly "
        "(tokens ask for it, the room watcher dispatches it); empty for automatic dispatch.",
    )
    room_watch_interval: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between a worker's looks at the server's rooms for one with a "
        "person and no live Clara (docs/operations.md#every-room-gets-clara).",
    )
    agent_dead_after: float = Field(
        default=4.0,
        gt=0,
        description="Seconds without a heartbeat after which a Clara agent is dead and replaced.",
    )
    job_memory_warn_mb: float = Field(
        default=1000, gt=0, description="A job process using more memory (MB) is logged."
    )
    job_memory_limit_mb: float = Field(
        default=0, ge=0, description="A job process using more memory (MB) is ended (0: never)."
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
    prometheus_port: int | None = Field(
        default=9464,
        ge=0,
        le=65535,
        description="Port of the Prometheus `/metrics` endpoint (covers job processes); "
        "empty to turn it off.",
    )
    unhealthy_loop_lag: PositiveSeconds = Field(
        default=0.5,
        description="Event-loop lag in seconds that makes an agent's health check fail.",
    )
    outbox_backlog_warning: int = Field(
        default=10_000,
        ge=1,
        description="Undelivered outbox records past which an agent's health check warns "
        "(reported only: a backlog never makes the worker refuse rooms).",
    )
    sync_interval: PositiveSeconds = Field(
        default=5.0,
        description="Seconds between checks of each session against the room (seed 003).",
    )
    max_reconnection_attempts: int = Field(
        default=5,
        ge=1,
        description="Reconnection attempts (drops, quality losses) without a recovery before "
        "a dropped participant's session ends.",
    )
    max_sessions_per_room: int = Field(
        default=8,
        ge=1,
        description="Sessions one room gets at once; a participant over it is told so "
        "(`clara.notice`) and gets one when a place frees up.",
    )


__all__ = ["ENV_PREFIX", "LogFormat", "LogLevel", "PositiveSeconds", "ServiceSettings"]
