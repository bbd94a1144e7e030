"""Settings: the one configuration object of clara_voice.

Built once when the process starts (from the environment and an optional ``.env`` file),
validated there, and passed down explicitly. LiveKit's own variables keep their standard
names (``LIVEKIT_URL``, ``LIVEKIT_API_KEY``, ``LIVEKIT_API_SECRET``); everything of ours
shares the ``CLARA_`` prefix. An invalid value stops the service at start with one line
per bad variable (see :func:`load_settings`), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsError as UnparsableSetting

from clara_voice import _urls
from clara_voice._names import check_host_names, check_room_name
from clara_voice._provider_specs import LLMSpec, STTProvider, STTSpec, TTSFormat, TTSSpec
from clara_voice._redact import remember_secrets, secrets_in
from clara_voice._settings_base import ENV_PREFIX, PositiveSeconds, ServiceSettings
from clara_voice._settings_errors import SettingsError, describe, describe_unparsable
from clara_voice.states import SessionType

TurnDetection = Literal["combined", "vad", "stt", "eot", "transcript"]

DEFAULT_INSTRUCTIONS = (
    "You are Clara, a friendly and concise voice assistant. Your replies are spoken aloud: "
    "answer in one to three short sentences of plain conversational text, with no "
    "markdown, lists, emoji or code. If you did not understand, ask the user to repeat."
)
DEFAULT_APOLOGY = "Sorry, something went wrong on my side. Could you say that again?"


class Settings(ServiceSettings):
    """Every knob of the service. Field docs are the README's configuration table; the
    first ones (LiveKit, worker, sessions) are declared in ``_settings_base.py``."""

    data_dir: Path = Field(
        default=Path("./data"), description="Where the embedded store and outbox live."
    )
    backend: Literal["sqlite", "postgres", "http"] = Field(
        default="sqlite",
        description="Where conversations are stored: `sqlite` (`<data dir>/clara.db`, one "
        "machine), `postgres` (`CLARA_DATABASE_URL`, a fleet) or `http` (a team's own "
        "backend, docs/backend-api.md).",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URL (with `CLARA_BACKEND=postgres`), e.g. "
        "`postgresql://user:password@host:5432/clara`.",
    )
    database_pool_max: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Most connections to PostgreSQL per job process (docs/operations.md).",
    )
    backend_url: str | None = Field(
        default=None, description="Base URL of the HTTP backend (with `CLARA_BACKEND=http`)."
    )
    backend_token: SecretStr | None = Field(
        default=None, description="Bearer token sent to the HTTP backend."
    )
    backend_allow_insecure_http: bool = Field(
        default=False,
        description="Send the token over plain `http://` to a host other than this machine.",
    )
    backend_timeout: PositiveSeconds = Field(
        default=5.0,
        description="Seconds before a backend request counts as failed.",
    )
    history_messages: int = Field(
        default=20,
        ge=0,
        description="Last messages of the conversation a new session continues from.",
    )
    summary_messages: int = Field(
        default=20, ge=0, description="Messages a session's summary repeats (its last ones)."
    )
    outbox_flush_timeout: PositiveSeconds = Field(
        default=5.0,
        description="Seconds a closing job spends delivering queued records; the rest waits "
        "in the outbox for the next process.",
    )
    outbox_retry_max: PositiveSeconds = Field(
        default=30.0, description="Longest pause between delivery attempts to a failing backend."
    )
    outbox_max_attempts: int = Field(
        default=10,
        ge=1,
        description="Failed attempts after which a record is dead-lettered, if the backend "
        "takes the records after it (a backend down for all keeps them all).",
    )
    outbox_max_age: PositiveSeconds = Field(
        default=900.0,
        description="Seconds a record may keep failing before it is dead-lettered, if the "
        "backend takes the records after it.",
    )
    outbox_max_bytes: int = Field(
        default=256 << 20,
        ge=1 << 20,
        description="Bytes of undelivered records kept; when full, new ones are refused "
        "(loudly), the oldest kept.",
    )
    outbox_max_dead_letters: int = Field(
        default=10_000,
        ge=1,
        description="Dead letters kept per outbox; past it the oldest are dropped (loudly).",
    )

    # -- conversation -----------------------------------------------------------------------
    instructions: str = Field(
        default=DEFAULT_INSTRUCTIONS, min_length=1, description="Clara's system prompt."
    )
    apology: str = Field(
        default=DEFAULT_APOLOGY,
        min_length=1,
        description="What the participant hears (or reads) when every provider failed a turn.",
    )
    default_session_type: SessionType = Field(
        default="voice-vad",
        description="Session type when the participant's `clara.session_type` attribute is absent "
        "or unknown: `text`, `voice-ptt` or `voice-vad`.",
    )

    # -- providers (see providers.py; fallbacks are JSON lists of the same fields) ----------
    stt_provider: STTProvider = Field(
        default="deepgram", description="Speech-to-text: `deepgram` or `openai` (compatible)."
    )
    stt_model: str | None = Field(
        default=None, description="STT model (default: nova-3 / gpt-4o-mini-transcribe)."
    )
    stt_language: str = Field(default="en", min_length=2, description="Language spoken.")
    stt_base_url: str | None = Field(
        default=None, description="STT endpoint of a compatible or self-hosted server."
    )
    stt_api_key: SecretStr | None = Field(
        default=None, description="Key for `CLARA_STT_BASE_URL` (the provider's own otherwise)."
    )
    stt_fallbacks: list[STTSpec] = Field(
        default_factory=list,
        description="JSON list of fallback STTs, e.g. "
        '`[{"provider": "openai", "base_url": "http://localhost:8000/v1"}]`.',
    )
    llm_model: str = Field(default="gpt-4.1-mini", min_length=1, description="LLM model.")
    llm_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint (llama.cpp, Ollama, vLLM, LM Studio); "
        "empty for OpenAI.",
    )
    llm_api_key: SecretStr | None = Field(
        default=None, description="Key for `CLARA_LLM_BASE_URL`, if that server wants one."
    )
    llm_temperature: float | None = Field(default=None, ge=0, le=2, description="Sampling.")
    llm_fallbacks: list[LLMSpec] = Field(
        default_factory=list,
        description='JSON list of fallback LLMs, e.g. `[{"model": "llama3.2", '
        '"base_url": "http://localhost:11434/v1"}]`.',
    )
    tts_model: str = Field(default="gpt-4o-mini-tts", min_length=1, description="TTS model.")
    tts_voice: str = Field(default="ash", min_length=1, description="TTS voice.")
    tts_base_url: str | None = Field(
        default=None, description="OpenAI-compatible speech endpoint; empty for OpenAI."
    )
    tts_api_key: SecretStr | None = Field(
        default=None, description="Key for `CLARA_TTS_BASE_URL`, if that server wants one."
    )
    tts_response_format: TTSFormat = Field(
        default="pcm", description="Audio format asked of the TTS (`pcm`: no decoding delay)."
    )
    tts_fallbacks: list[TTSSpec] = Field(
        default_factory=list, description="JSON list of fallback TTSs (same fields)."
    )
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias="OPENAI_API_KEY", description="OpenAI's API key."
    )
    deepgram_api_key: SecretStr | None = Field(
        default=None, validation_alias="DEEPGRAM_API_KEY", description="Deepgram's API key."
    )
    provider_timeout: PositiveSeconds = Field(
        default=10.0, description="Seconds before a provider request counts as failed."
    )
    provider_max_retry: int = Field(
        default=2, ge=0, description="Retries of a failed provider request before failover."
    )
    provider_retry_interval: float = Field(
        default=0.5, ge=0, description="Seconds between those retries."
    )

    # -- turn handling ----------------------------------------------------------------------
    turn_detection: TurnDetection = Field(
        default="combined",
        description="voice-vad end of turn: `combined` (waits longer when the words or the "
        "sound say the sentence goes on), `vad`, `stt`, `eot` (livekit's model) or "
        "`transcript` (docs/operations.md#turns).",
    )
    preemptive_generation: Literal["off", "llm", "llm_tts"] = Field(
        default="llm",
        description="Start the reply before the turn is confirmed: `llm` (livekit's default), "
        "`llm_tts` (the speech too) or `off`.",
    )
    min_endpointing_delay: float | None = Field(
        default=None,
        ge=0,
        description="Seconds after the end of speech before a turn ends; empty: the turn "
        "detection's own.",
    )
    max_endpointing_delay: float | None = Field(
        default=None,
        ge=0,
        description="The same when the sentence seems to go on; empty: the turn detection's own.",
    )
    allow_interruptions: bool = Field(
        default=True, description="Whether the participant can interrupt Clara by speaking."
    )
    min_interruption_duration: float = Field(
        default=0.5, ge=0, description="Seconds of speech that count as an interruption."
    )
    vad_min_silence_duration: float | None = Field(
        default=None,
        gt=0,
        description="Silence the VAD needs to end a speech segment; empty: the turn "
        "detection's own.",
    )
    vad_activation_threshold: float = Field(
        default=0.5, gt=0, lt=1, description="VAD probability that starts speech."
    )

    # -- the web page (`python -m clara_voice web`) ------------------------------------------
    web_host: str = Field(
        default="127.0.0.1",
        description="Interface of the web page and its token endpoint; beyond this machine "
        "only with `CLARA_WEB_ALLOW_REMOTE`.",
    )
    web_port: int = Field(default=3000, ge=0, le=65535, description="Port of the web page.")
    web_allow_remote: bool = Field(
        default=False,
        description="Let the web page listen beyond this machine: whoever reaches it gets "
        "a LiveKit token.",
    )
    web_livekit_url: str | None = Field(
        default=None,
        description="LiveKit URL the browser connects to (default: `LIVEKIT_URL`).",
    )
    web_dist: Path = Field(
        default=Path("./web/dist"), description="The built page (`make web` builds it)."
    )
    web_allowed_hosts: str = Field(
        default="",
        description="Comma-separated host names the page answers to besides its address and "
        "`localhost` (e.g. `clara.example.com` behind a proxy); any other `Host` gets 403.",
    )
    web_room: str | None = Field(
        default=None,
        description="The one room the page's tokens are for (default: the room the person types).",
    )

    # -- the demo (`python -m clara_voice demo`; its server listens where LIVEKIT_URL says) --
    demo_rtc_port: int = Field(
        default=7882, ge=1, le=65535, description="UDP port of the demo's LiveKit server for media."
    )
    livekit_server_bin: Path | None = Field(
        default=None,
        validation_alias="LIVEKIT_SERVER_BIN",
        description="livekit-server binary the demo runs (default: `make livekit-server`'s, "
        "else the PATH's).",
    )

    @field_validator(
        "livekit_url",
        "web_livekit_url",
        "backend_url",
        "stt_base_url",
        "llm_base_url",
        "tts_base_url",
    )
    @classmethod
    def _check_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or info.field_name in ("livekit_url", "web_livekit_url"):
            return value if value is None else _urls.check_livekit_url(value)
        kind = (info.field_name or "").split("_")[0]  # backend, stt, llm, tts
        secret = "BACKEND_TOKEN" if kind == "backend" else f"{kind.upper()}_API_KEY"
        return _urls.check_http_url(value, credentials=ENV_PREFIX + secret)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _urls.check_postgres_url(value.get_secret_value())
        return value

    @field_validator(
        "prometheus_port",
        "num_idle_processes",
        "load_threshold",
        "web_livekit_url",
        "web_room",
        "database_url",
        "livekit_server_bin",
        "min_endpointing_delay",
        "max_endpointing_delay",
        "vad_min_silence_duration",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("web_room")
    @classmethod
    def _check_room(cls, value: str | None) -> str | None:
        return value if value is None else check_room_name(value)

    @field_validator("web_allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: str) -> str:
        return check_host_names(value)

    @field_validator("livekit_api_secret")
    @classmethod
    def _check_secret(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _check_backend(self) -> Settings:
        if self.backend == "http" and not self.backend_url:
            raise ValueError("CLARA_BACKEND=http needs CLARA_BACKEND_URL")
        if self.backend == "postgres" and self.database_url is None:
            raise ValueError("CLARA_BACKEND=postgres needs CLARA_DATABASE_URL")
        if self.backend_token_in_clear() and not self.backend_allow_insecure_http:
            raise ValueError(
                "CLARA_BACKEND_URL is plain http:// to another host: CLARA_BACKEND_TOKEN "
                "would cross the network readable; use https://, or set "
                "CLARA_BACKEND_ALLOW_INSECURE_HTTP=true"
            )
        return self

    def backend_token_in_clear(self) -> bool:
        """Whether the backend's token goes over plain http to a host that is not this one."""
        if self.backend != "http" or not self.backend_url or self.backend_token is None:
            return False
        return _urls.is_plain_http_elsewhere(self.backend_url)


def load_settings(**overrides: Any) -> Settings:
    """Build :class:`Settings`, translating validation errors into :class:`SettingsError`.

    ``overrides`` are keyword values (by field name) that win over the environment; the
    tests and the benchmarks use them.
    """
    init = {_init_key(name): value for name, value in overrides.items()}
    names = {name: Settings.env_name(name) for name in Settings.model_fields}
    try:
        settings = Settings(**init)
    except ValidationError as exc:
        raise SettingsError(describe(exc, names, secret=_SECRET_FIELDS)) from None
    except UnparsableSetting as exc:  # e.g. CLARA_LLM_FALLBACKS that is not JSON
        raise SettingsError(describe_unparsable(exc, names)) from None
    remember_secrets(secrets_in(settings))  # hidden from every line written from now on
    return settings


_SECRET_FIELDS = frozenset(
    name
    for name, info in Settings.model_fields.items()
    if SecretStr in (info.annotation, *get_args(info.annotation))
)
"""Fields whose refused value is never shown (a database URL carries its password)."""


def _init_key(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else field


__all__ = [
    "ENV_PREFIX",
    "LLMSpec",
    "STTSpec",
    "Settings",
    "SettingsError",
    "TTSSpec",
    "load_settings",
]
