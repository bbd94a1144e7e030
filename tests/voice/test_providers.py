"""Providers from settings: which plugin, which endpoint, which key, and failover."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit.agents import llm, stt, tts
from livekit.agents.utils import http_context
from livekit.plugins import deepgram, openai

from clara_voice.config import load_settings
from clara_voice.voice.providers import build_providers, connect_options, missing_keys
from testkit.loopback_providers import LoopbackOpenAI
from testkit.worker import start_clara


def test_the_defaults_need_the_cloud_keys_and_say_which() -> None:
    problems = missing_keys(load_settings())
    assert problems == [
        "missing setting DEEPGRAM_API_KEY: CLARA_STT_PROVIDER=deepgram needs it "
        "(or set CLARA_STT_BASE_URL to a compatible server that needs no key)",
        "missing setting OPENAI_API_KEY: the OpenAI LLM needs it "
        "(or set CLARA_LLM_BASE_URL to a compatible server that needs no key)",
        "missing setting OPENAI_API_KEY: the OpenAI TTS needs it "
        "(or set CLARA_TTS_BASE_URL to a compatible server that needs no key)",
    ]
    assert missing_keys(load_settings(openai_api_key="k", deepgram_api_key="k")) == []


def test_a_local_llm_needs_no_key() -> None:
    settings = load_settings(
        deepgram_api_key="k", llm_base_url="http://localhost:11434/v1", llm_model="llama3.2"
    )
    assert [p for p in missing_keys(settings) if "LLM" in p] == []
    assert any("TTS" in p for p in missing_keys(settings))


def test_fallbacks_are_checked_too() -> None:
    settings = load_settings(
        openai_api_key="k",
        deepgram_api_key="k",
        stt_fallbacks=[{"provider": "deepgram", "model": "nova-2"}],
    )
    assert missing_keys(settings) == []
    settings = load_settings(
        openai_api_key=None,
        deepgram_api_key="k",
        llm_base_url="http://localhost:8080/v1",
        tts_base_url="http://localhost:8880/v1",
        llm_fallbacks=[{"model": "gpt-4.1-mini"}],
    )
    (problem,) = missing_keys(settings)
    assert problem.startswith("missing setting OPENAI_API_KEY: CLARA_LLM_FALLBACKS[0] needs it")


def test_the_service_stops_at_start_naming_the_missing_key(tmp_path: Path) -> None:
    result = start_clara(tmp_path, DEEPGRAM_API_KEY="k")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "missing setting OPENAI_API_KEY",
        "missing setting OPENAI_API_KEY",
    ]
    assert "Traceback" not in result.stderr


@pytest.fixture
async def http_session() -> AsyncIterator[None]:
    http_context._new_session_ctx()
    yield
    await http_context._close_http_ctx()


async def test_plugins_are_built_for_the_configured_endpoints(http_session: None) -> None:
    settings = load_settings(
        deepgram_api_key="dg-key",
        openai_api_key="oa-key",
        llm_model="gpt-4.1-mini",
        tts_voice="nova",
    )
    providers = build_providers(settings)
    try:
        assert isinstance(providers.stt, deepgram.STT)
        assert isinstance(providers.llm, openai.LLM)
        assert isinstance(providers.tts, openai.TTS)
        assert providers.llm.model == "gpt-4.1-mini"
    finally:
        await providers.aclose()


async def test_fallbacks_become_livekits_fallback_adapters(http_session: None) -> None:
    settings = load_settings(
        stt_provider="openai",
        stt_base_url="http://127.0.0.1:9/v1",
        stt_fallbacks=[{"provider": "deepgram", "base_url": "http://127.0.0.1:9/v1/listen"}],
        llm_base_url="http://127.0.0.1:9/v1",
        llm_fallbacks=[{"model": "llama3.2", "base_url": "http://127.0.0.1:10/v1"}],
        tts_base_url="http://127.0.0.1:9/v1",
        tts_fallbacks=[{"base_url": "http://127.0.0.1:10/v1", "voice": "af_bella"}],
    )
    from livekit.agents import inference

    providers = build_providers(settings, vad=inference.VAD())
    try:
        assert isinstance(providers.stt, stt.FallbackAdapter)
        assert isinstance(providers.llm, llm.FallbackAdapter)
        assert isinstance(providers.tts, tts.FallbackAdapter)
    finally:
        await providers.aclose()


async def test_a_failing_llm_fails_over_to_the_next_one(http_session: None) -> None:
    async with (
        LoopbackOpenAI() as primary,
        LoopbackOpenAI(default_reply="From the backup.") as backup,
    ):
        primary.fail("chat", "status_500", count=10)
        settings = load_settings(
            llm_base_url=primary.base_url,
            llm_fallbacks=[{"model": "llama3.2", "base_url": backup.base_url}],
            provider_max_retry=0,
        )
        providers = build_providers(settings)
        try:
            ctx = llm.ChatContext()
            ctx.add_message(role="user", content="hello")
            stream = providers.llm.chat(
                chat_ctx=ctx, conn_options=connect_options(settings).llm_conn_options
            )
            async with stream:
                text = "".join(
                    [c.delta.content async for c in stream if c.delta and c.delta.content]
                )
        finally:
            await providers.aclose()
    assert text == "From the backup."
    assert primary.outcomes("chat")[0] != "ok"
    assert backup.chat_requests[0]["model"] == "llama3.2"
    assert backup.chat_requests[0]["messages"][-1]["content"] == "hello"
