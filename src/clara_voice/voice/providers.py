"""Providers: the STT, LLM and TTS instances a pipeline uses, built from Settings.

Each kind has a primary provider and optional fallbacks (``CLARA_*_FALLBACKS``); more than
one becomes livekit's ``FallbackAdapter``. A cloud provider needs its API key; an
OpenAI-compatible endpoint named by base URL (llama.cpp, Ollama, vLLM, LM Studio, a
self-hosted speech server) needs none. :func:`missing_keys` finds what is missing so the
service stops at start with one line per variable, before it registers with LiveKit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import openai as openai_sdk
from livekit.agents import APIConnectOptions, llm, stt, tts, vad
from livekit.agents.types import NOT_GIVEN
from livekit.agents.voice.agent_session import SessionConnectOptions
from livekit.plugins import deepgram, openai
from pydantic import SecretStr

from clara_voice.config import LLMSpec, Settings, STTSpec, TTSSpec

# the openai SDK refuses an empty key; a keyless local server ignores whatever it is sent
_NO_KEY = "no-key"

_DEFAULT_STT_MODEL = {"deepgram": "nova-3", "openai": "gpt-4o-mini-transcribe"}


AnySTT = stt.STT[Any]
AnyLLM = llm.LLM[Any]
AnyTTS = tts.TTS[Any]


@dataclass(frozen=True, kw_only=True)
class Providers:
    """The provider instances of one room's pipelines (shared by its participants)."""

    stt: AnySTT
    llm: AnyLLM
    tts: AnyTTS
    members: tuple[AnySTT | AnyLLM | AnyTTS, ...] = ()
    """The instances behind FallbackAdapters (which do not close what they wrap)."""
    clients: tuple[openai_sdk.AsyncClient, ...] = ()
    """HTTP clients we created for plugins that do not close their own."""

    async def aclose(self) -> None:
        """Close everything, even when one close fails; the first failure is raised."""
        failures: list[BaseException] = []
        closers = [p.aclose for p in (self.stt, self.llm, self.tts, *self.members)]
        closers += [client.close for client in self.clients]
        for close in closers:
            try:
                await close()
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]


def stt_chain(settings: Settings) -> list[STTSpec]:
    """The primary STT followed by its fallbacks."""
    primary = STTSpec(
        provider=settings.stt_provider,
        model=settings.stt_model,
        language=settings.stt_language,
        base_url=settings.stt_base_url,
        api_key=settings.stt_api_key,
    )
    return [primary, *settings.stt_fallbacks]


def llm_chain(settings: Settings) -> list[LLMSpec]:
    """The primary LLM followed by its fallbacks."""
    primary = LLMSpec(
        model=settings.llm_model,
        base_url=settings.llm_base_url,
        api_key=settings.llm_api_key,
        temperature=settings.llm_temperature,
    )
    return [primary, *settings.llm_fallbacks]


def tts_chain(settings: Settings) -> list[TTSSpec]:
    """The primary TTS followed by its fallbacks."""
    primary = TTSSpec(
        model=settings.tts_model,
        voice=settings.tts_voice,
        base_url=settings.tts_base_url,
        api_key=settings.tts_api_key,
        response_format=settings.tts_response_format,
    )
    return [primary, *settings.tts_fallbacks]


def connect_options(settings: Settings) -> SessionConnectOptions:
    """Retries and timeouts livekit applies to every provider request."""
    options = APIConnectOptions(
        max_retry=settings.provider_max_retry,
        retry_interval=settings.provider_retry_interval,
        timeout=settings.provider_timeout,
    )
    return SessionConnectOptions(
        stt_conn_options=options, llm_conn_options=options, tts_conn_options=options
    )


def build_providers(settings: Settings, *, vad: vad.VAD | None = None) -> Providers:
    """STT, LLM and TTS as configured, each wrapped in a FallbackAdapter when it has fallbacks.

    ``vad`` lets a chain that mixes streaming and non-streaming STTs segment speech for the
    non-streaming ones (livekit's StreamAdapter).
    """
    clients: list[openai_sdk.AsyncClient] = []
    stts = [build_stt(spec, settings, clients) for spec in stt_chain(settings)]
    llms = [build_llm(spec, settings) for spec in llm_chain(settings)]
    ttss = [build_tts(spec, settings) for spec in tts_chain(settings)]
    retry = settings.provider_max_retry
    return Providers(
        stt=stts[0]
        if len(stts) == 1
        else stt.FallbackAdapter(
            stts, vad=vad, attempt_timeout=settings.provider_timeout, max_retry_per_stt=retry
        ),
        llm=llms[0]
        if len(llms) == 1
        else llm.FallbackAdapter(
            llms, attempt_timeout=settings.provider_timeout, max_retry_per_llm=retry
        ),
        tts=ttss[0] if len(ttss) == 1 else tts.FallbackAdapter(ttss, max_retry_per_tts=retry),
        members=tuple(p for chain in (stts, llms, ttss) if len(chain) > 1 for p in chain),
        clients=tuple(clients),
    )


def build_stt(
    spec: STTSpec, settings: Settings, clients: list[openai_sdk.AsyncClient]
) -> stt.STT[Any]:
    model = spec.model or _DEFAULT_STT_MODEL[spec.provider]
    if spec.provider == "deepgram":
        kwargs: dict[str, Any] = {}
        if spec.base_url:
            kwargs["base_url"] = spec.base_url
        return deepgram.STT(
            model=model,
            language=spec.language,
            api_key=_key(spec.api_key, settings.deepgram_api_key, spec.base_url),
            **kwargs,
        )
    # livekit's openai.STT does not close a client it creates itself, so we own this one
    client = openai_sdk.AsyncClient(
        api_key=_key(spec.api_key, settings.openai_api_key, spec.base_url),
        base_url=spec.base_url,
        max_retries=0,
    )
    clients.append(client)
    return openai.STT(model=model, language=spec.language, client=client, use_realtime=False)


def build_llm(spec: LLMSpec, settings: Settings) -> llm.LLM[Any]:
    extra: dict[str, Any] = {}
    if spec.temperature is not None:
        extra["temperature"] = spec.temperature
    return openai.LLM(
        model=spec.model,
        base_url=spec.base_url or _not_given(),
        api_key=_key(spec.api_key, settings.openai_api_key, spec.base_url),
        **extra,
    )


def build_tts(spec: TTSSpec, settings: Settings) -> tts.TTS[Any]:
    return openai.TTS(
        model=spec.model,
        voice=spec.voice,
        base_url=spec.base_url or _not_given(),
        api_key=_key(spec.api_key, settings.openai_api_key, spec.base_url),
        response_format=spec.response_format,
    )


@dataclass(frozen=True, kw_only=True)
class MissingKey:
    """A selected cloud provider without its API key."""

    variable: str
    """The key to set: ``DEEPGRAM_API_KEY`` or ``OPENAI_API_KEY``."""
    user: str
    """What needs it (``CLARA_STT_PROVIDER=deepgram``, ``the OpenAI LLM``...)."""
    kind: str
    """``STT``, ``LLM`` or ``TTS``: ``CLARA_<kind>_BASE_URL`` names a keyless server."""

    def __str__(self) -> str:
        return (
            f"missing setting {self.variable}: {self.user} needs it "
            f"(or set CLARA_{self.kind}_BASE_URL to a compatible server that needs no key)"
        )


def missing_provider_keys(settings: Settings) -> list[MissingKey]:
    """Every cloud provider that is selected but has no API key, in the chains' order."""
    missing = []
    for index, spec in enumerate(stt_chain(settings)):
        where = "CLARA_STT_PROVIDER" if index == 0 else f"CLARA_STT_FALLBACKS[{index - 1}]"
        if spec.base_url or spec.api_key:
            continue
        if spec.provider == "deepgram" and settings.deepgram_api_key is None:
            missing.append(
                MissingKey(variable="DEEPGRAM_API_KEY", user=f"{where}=deepgram", kind="STT")
            )
        if spec.provider == "openai" and settings.openai_api_key is None:
            missing.append(
                MissingKey(variable="OPENAI_API_KEY", user=f"{where}=openai", kind="STT")
            )
    endpoints: list[tuple[str, list[tuple[str | None, SecretStr | None]]]] = [
        ("LLM", [(spec.base_url, spec.api_key) for spec in llm_chain(settings)]),
        ("TTS", [(spec.base_url, spec.api_key) for spec in tts_chain(settings)]),
    ]
    for kind, chain in endpoints:
        for index, (base_url, api_key) in enumerate(chain):
            if base_url or api_key or settings.openai_api_key is not None:
                continue
            where = f"the OpenAI {kind}" if index == 0 else f"CLARA_{kind}_FALLBACKS[{index - 1}]"
            missing.append(MissingKey(variable="OPENAI_API_KEY", user=where, kind=kind))
    return list(dict.fromkeys(missing))


def missing_keys(settings: Settings) -> list[str]:
    """One line per cloud provider that is selected but has no API key."""
    return list(dict.fromkeys(map(str, missing_provider_keys(settings))))


def _key(own: SecretStr | None, provider: SecretStr | None, base_url: str | None) -> str:
    if own is not None:
        return own.get_secret_value()
    if base_url:  # a custom endpoint never receives the cloud provider's key
        return _NO_KEY
    return provider.get_secret_value() if provider is not None else _NO_KEY


def _not_given() -> Any:
    return NOT_GIVEN
