"""What a provider setting holds: one speech-to-text, LLM or text-to-speech endpoint.

The primary provider of each kind comes from its ``CLARA_STT_*``, ``CLARA_LLM_*`` or
``CLARA_TTS_*`` settings; ``CLARA_*_FALLBACKS`` are JSON lists of these same fields, tried in
order when the one before fails.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

from clara_voice._urls import check_http_url

STTProvider = Literal["deepgram", "openai"]
TTSFormat = Literal["pcm", "wav", "mp3", "opus", "aac", "flac"]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("base_url", check_fields=False)
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value, credentials="api_key")


class STTSpec(_Spec):
    """One speech-to-text provider (the primary one or a fallback)."""

    provider: STTProvider = "deepgram"
    model: str | None = None
    language: str = "en"
    base_url: str | None = None
    api_key: SecretStr | None = None


class LLMSpec(_Spec):
    """One OpenAI-compatible LLM endpoint."""

    model: str = "gpt-4.1-mini"
    base_url: str | None = None
    api_key: SecretStr | None = None
    temperature: float | None = None


class TTSSpec(_Spec):
    """One OpenAI-compatible speech endpoint."""

    model: str = "gpt-4o-mini-tts"
    voice: str = "ash"
    base_url: str | None = None
    api_key: SecretStr | None = None
    response_format: TTSFormat = "pcm"


__all__ = ["LLMSpec", "STTProvider", "STTSpec", "TTSFormat", "TTSSpec"]
