"""The REAL livekit OpenAI and Deepgram plugins against the loopback provider peers.

No mocks: ``openai.LLM``/``TTS``/``STT`` and ``deepgram.STT`` build their real requests,
reach :mod:`testkit.loopback_providers` over 127.0.0.1 through their ``base_url`` and parse
its answers with their own code. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import numpy as np
import openai as openai_sdk
import pytest
from livekit import rtc
from livekit.agents import (
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APIStatusError,
    APITimeoutError,
    llm,
    stt,
    tts,
)
from livekit.plugins import deepgram, openai

from testkit.loopback_providers import (
    DEFAULT_REPLY,
    DEFAULT_TRANSCRIPT,
    LoopbackDeepgram,
    LoopbackOpenAI,
    Segment,
    utterance_frames,
)
from testkit.tasks import other_tasks

TIMEOUT = 5.0
NO_RETRY = APIConnectOptions(max_retry=0, timeout=TIMEOUT)
SPEECH_EVENTS = (
    stt.SpeechEventType.START_OF_SPEECH,
    stt.SpeechEventType.INTERIM_TRANSCRIPT,
    stt.SpeechEventType.FINAL_TRANSCRIPT,
    stt.SpeechEventType.END_OF_SPEECH,
)


@pytest.fixture(autouse=True)
def _no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The peers must never fail inside aiohttp (an unhandled handler error, a bad close)."""
    caplog.set_level(logging.WARNING, logger="aiohttp")
    yield
    errors = [
        r
        for r in caplog.get_records("call")
        if r.name.startswith("aiohttp") and r.levelno >= logging.ERROR
    ]
    assert not errors, [r.getMessage() for r in errors]


@pytest.fixture
async def server() -> AsyncIterator[LoopbackOpenAI]:
    async with LoopbackOpenAI() as peer:
        yield peer


@pytest.fixture
async def dg() -> AsyncIterator[LoopbackDeepgram]:
    async with LoopbackDeepgram(transcripts=["hello clara", "what time is it"]) as peer:
        yield peer


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def lk_llm(server: LoopbackOpenAI) -> AsyncIterator[openai.LLM]:
    model = openai.LLM(model="gpt-4o-mini", base_url=server.base_url, api_key="dummy")
    yield model
    await model.aclose()


# -- helpers --------------------------------------------------------------------------------


def chat_ctx(user_text: str) -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content="You are Clara, a voice assistant.")
    ctx.add_message(role="user", content=user_text)
    return ctx


async def complete(
    model: openai.LLM, user_text: str, conn_options: APIConnectOptions = NO_RETRY
) -> tuple[str, list[llm.ChatChunk]]:
    """The streamed reply's text and every chunk."""
    chunks: list[llm.ChatChunk] = []
    async with (
        asyncio.timeout(TIMEOUT),
        model.chat(chat_ctx=chat_ctx(user_text), conn_options=conn_options) as stream,
    ):
        async for chunk in stream:
            chunks.append(chunk)
    text = "".join(c.delta.content or "" for c in chunks if c.delta is not None)
    return text, chunks


async def collect_until(
    stream: stt.RecognizeStream,
    done: Callable[[list[stt.SpeechEvent]], bool],
    timeout: float = TIMEOUT,
) -> list[stt.SpeechEvent]:
    """The stream's events up to the first prefix ``done`` accepts."""
    events: list[stt.SpeechEvent] = []
    async with asyncio.timeout(timeout):
        async for event in stream:
            events.append(event)
            if done(events):
                break
    return events


def ends_of_speech(count: int) -> Callable[[list[stt.SpeechEvent]], bool]:
    def done(events: list[stt.SpeechEvent]) -> bool:
        ends = [e for e in events if e.type == stt.SpeechEventType.END_OF_SPEECH]
        return len(ends) >= count

    return done


def speech_flow(events: list[stt.SpeechEvent]) -> list[tuple[str, str]]:
    """(event type, text) of the speech events, consecutive interims folded into one."""
    flow: list[tuple[str, str]] = []
    for event in events:
        if event.type not in SPEECH_EVENTS:
            continue
        text = event.alternatives[0].text if event.alternatives else ""
        if event.type == stt.SpeechEventType.INTERIM_TRANSCRIPT:
            if flow and flow[-1][0] == "interim":
                flow.pop()
            flow.append(("interim", text))
        else:
            flow.append((event.type.value.removesuffix("_transcript"), text))
    return flow


async def synthesize(synth: openai.TTS, text: str) -> list[tts.SynthesizedAudio]:
    async with (
        asyncio.timeout(TIMEOUT),
        synth.synthesize(text, conn_options=NO_RETRY) as stream,
    ):
        return [audio async for audio in stream]


def synthesized_frames(audio: list[tts.SynthesizedAudio]) -> list[rtc.AudioFrame]:
    """The frames of a synthesis without the AudioEmitter's end-of-segment marker.

    When the last decoded frame was already sent, livekit's AudioEmitter ends the segment
    with a 10 ms silent ``is_final`` frame that is not part of the provider's audio.
    """
    frames = [a.frame for a in audio]
    last = audio[-1] if audio else None
    if (
        last is not None
        and last.is_final
        and last.frame.samples_per_channel == last.frame.sample_rate // 100
        and not any(np.frombuffer(last.frame.data, dtype=np.int16))
    ):
        frames.pop()
    return frames


def samples_of(frames: list[rtc.AudioFrame]) -> np.ndarray:
    return np.frombuffer(rtc.combine_audio_frames(frames).data, dtype=np.int16)


# -- openai.LLM: chat completions ---------------------------------------------------------


async def test_llm_streams_the_scripted_reply(server: LoopbackOpenAI, lk_llm: openai.LLM) -> None:
    server.replies = ["It is ten past three.", "Anything else?"]

    text, chunks = await complete(lk_llm, "what time is it")
    second, _ = await complete(lk_llm, "thanks")
    third, _ = await complete(lk_llm, "bye")

    assert (text, second, third) == ("It is ten past three.", "Anything else?", DEFAULT_REPLY)
    content = [c.delta.content for c in chunks if c.delta is not None and c.delta.content]
    assert len(content) == 5  # one delta per word, as OpenAI streams tokens
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].total_tokens > 0  # the include_usage chunk

    request = server.chat_requests[0]
    assert request["model"] == "gpt-4o-mini"
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert {"role": "user", "content": "what time is it"} in request["messages"]
    assert server.outcomes("chat") == ["ok", "ok", "ok"]


async def test_llm_replies_can_be_computed_from_the_request(
    server: LoopbackOpenAI, lk_llm: openai.LLM
) -> None:
    def echo(body: dict[str, Any]) -> str:
        return f"You said: {body['messages'][-1]['content']}"

    server.replies = echo
    text, _ = await complete(lk_llm, "good morning")
    assert text == "You said: good morning"


async def test_llm_status_500_surfaces_then_service_resumes(
    server: LoopbackOpenAI, lk_llm: openai.LLM
) -> None:
    server.fail("chat", "status_500")

    with pytest.raises(APIStatusError) as failure:
        await complete(lk_llm, "hello")
    assert failure.value.status_code == 500
    assert failure.value.retryable

    text, _ = await complete(lk_llm, "hello again")
    assert text == DEFAULT_REPLY
    assert server.outcomes("chat") == ["status_500", "ok"]
    assert server.count("chat") == len(server.chat_requests) == 2


async def test_llm_retries_show_as_extra_requests(
    server: LoopbackOpenAI, lk_llm: openai.LLM
) -> None:
    errors: list[llm.LLMError] = []
    lk_llm.on("error", errors.append)
    one_retry = APIConnectOptions(max_retry=1, retry_interval=0.0, timeout=TIMEOUT)

    server.fail("chat", "status_500")
    text, _ = await complete(lk_llm, "hello", one_retry)
    assert text == DEFAULT_REPLY
    assert server.outcomes("chat") == ["status_500", "ok"]
    assert [e.recoverable for e in errors] == [True]
    # the retry sent the same conversation again
    assert server.chat_requests[0]["messages"] == server.chat_requests[1]["messages"]

    server.fail("chat", "status_500", count=2)
    with pytest.raises(APIConnectionError) as failure:
        await complete(lk_llm, "hello", one_retry)
    assert isinstance(failure.value.__cause__, APIStatusError)
    assert server.outcomes("chat")[2:] == ["status_500", "status_500"]
    assert [e.recoverable for e in errors][1:] == [True, False]


async def test_llm_dropped_and_hanging_responses(
    server: LoopbackOpenAI, lk_llm: openai.LLM
) -> None:
    server.replies = ["Sorry, say again?"]
    server.fail("chat", "drop")  # the role chunk arrives, then the connection is cut
    with pytest.raises(APIConnectionError):
        await complete(lk_llm, "hello")

    server.fail("chat", "hang")
    started = time.monotonic()
    with pytest.raises(APITimeoutError):
        await complete(lk_llm, "hello", APIConnectOptions(max_retry=0, timeout=0.3))
    assert time.monotonic() - started < 2.0

    text, _ = await complete(lk_llm, "hello")
    assert text == "Sorry, say again?"  # failed requests use up no scripted reply
    assert server.outcomes("chat") == ["drop", "hang", "ok"]


async def test_llm_waits_out_the_latency(server: LoopbackOpenAI, lk_llm: openai.LLM) -> None:
    server.latency = 0.3
    started = time.monotonic()
    async with asyncio.timeout(TIMEOUT), lk_llm.chat(chat_ctx=chat_ctx("hi")) as stream:
        first = await anext(stream)
        first_after = time.monotonic() - started
        rest = [c async for c in stream]
    assert first_after >= 0.3
    assert first.delta is not None and first.delta.content == "Hello,"
    assert rest


async def test_sdk_non_streaming_completion_and_auth() -> None:
    async with LoopbackOpenAI(api_key="sk-right", replies=["Plain answer."]) as server:
        async with openai_sdk.AsyncOpenAI(base_url=server.base_url, api_key="sk-right") as sdk:
            completion = await sdk.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                timeout=TIMEOUT,
            )
            models = await sdk.models.list()
        assert completion.choices[0].message.content == "Plain answer."
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None and completion.usage.total_tokens > 0
        assert models.data

        wrong = openai.LLM(model="gpt-4o-mini", base_url=server.base_url, api_key="sk-wrong")
        try:
            with pytest.raises(APIStatusError) as failure:
                await complete(wrong, "hi")
        finally:
            await wrong.aclose()
        assert failure.value.status_code == 401
        assert not failure.value.retryable
        assert server.outcomes("chat") == ["ok", "status_401"]


# -- openai.TTS: audio/speech ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "response_format", "stream_format", "tolerance"),
    [
        ("gpt-4o-mini-tts", "pcm", "sse", 0.001),
        ("gpt-4o-mini-tts", "mp3", "sse", 0.1),  # mp3 pads to whole frames
        # livekit's low-latency AudioStreamDecoder loses the last flac block (96 ms here)
        ("gpt-4o-mini-tts", "flac", "sse", 0.1),
        ("tts-1", "wav", "audio", 0.001),
        ("tts-1", "opus", "audio", 0.03),  # …and the last 20 ms opus packet
        ("tts-1", "aac", "audio", 0.1),  # aac's encoder delay is not trimmed from adts
    ],
)
async def test_tts_synthesizes_audio_of_the_expected_length(
    server: LoopbackOpenAI,
    model: str,
    response_format: str,
    stream_format: str,
    tolerance: float,
) -> None:
    text = "Hello, this is Clara. How can I help?"
    synth = openai.TTS(
        base_url=server.base_url,
        api_key="dummy",
        model=model,
        voice="ash",
        response_format=response_format,
    )
    try:
        audio = await synthesize(synth, text)
    finally:
        await synth.aclose()

    frames = synthesized_frames(audio)
    assert {(f.sample_rate, f.num_channels) for f in frames} == {(24000, 1)}
    samples = samples_of(frames)
    expected = server.speech_duration(text)
    assert expected == pytest.approx(len(text) * 0.06, abs=0.001)
    assert len(samples) / 24000 == pytest.approx(expected, abs=tolerance)
    assert np.abs(samples).max() > 5000  # a real waveform, not silence
    assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 1000
    assert len({a.request_id for a in audio}) == 1 and audio[0].request_id.startswith("req_")

    request = server.speech_requests[0]
    assert request["input"] == text
    assert (request["model"], request["voice"]) == (model, "ash")
    assert request["response_format"] == response_format
    assert request["stream_format"] == stream_format


async def test_tts_dropped_connection_is_an_api_error(server: LoopbackOpenAI) -> None:
    synth = openai.TTS(base_url=server.base_url, api_key="dummy", response_format="pcm")
    try:
        server.fail("speech", "drop")  # the first audio delta arrives, then the cut
        with pytest.raises(APIError):
            await synthesize(synth, "Hello there.")
        frames = synthesized_frames(await synthesize(synth, "Hello there."))
    finally:
        await synth.aclose()
    assert len(samples_of(frames)) / 24000 == pytest.approx(server.speech_duration("Hello there."))
    assert server.outcomes("speech") == ["drop", "ok"]


# -- openai.STT: audio/transcriptions -------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "response_format"),
    [("gpt-4o-mini-transcribe", "json"), ("whisper-1", "verbose_json")],
)
async def test_openai_stt_recognizes_through_the_http_endpoint(
    server: LoopbackOpenAI, model: str, response_format: str
) -> None:
    server.transcripts = ["turn on the lights"]
    frames = utterance_frames([("silence", 0.2), ("speech", 1.0), ("silence", 0.3)], 24000)
    recognizer = openai.STT(
        base_url=server.base_url, api_key="dummy", model=model, use_realtime=False
    )
    try:
        assert not recognizer.capabilities.streaming
        async with asyncio.timeout(TIMEOUT):
            event = await recognizer.recognize(frames, conn_options=NO_RETRY)
            second = await recognizer.recognize(frames, conn_options=NO_RETRY)
    finally:
        await recognizer.aclose()
        # openai.STT.aclose() closes its websocket pool but not the openai client it made
        await recognizer._client.close()

    assert event.type == stt.SpeechEventType.FINAL_TRANSCRIPT
    assert event.alternatives[0].text == "turn on the lights"
    assert event.alternatives[0].language == "en"
    assert second.alternatives[0].text == DEFAULT_TRANSCRIPT
    request = server.transcription_requests[0]
    assert (request.model, request.language) == (model, "en")
    assert request.response_format == response_format
    assert (request.filename, request.content_type) == ("file.wav", "audio/wav")
    assert request.audio_seconds == pytest.approx(1.5, abs=0.02)
    assert request.audio_bytes > 1.5 * 24000 * 2


async def test_openai_stt_failures_surface_and_keep_the_script(server: LoopbackOpenAI) -> None:
    server.transcripts = ["play some jazz"]
    server.fail("transcriptions", "status_500")
    server.fail("transcriptions", "drop")  # half the JSON body, then the cut
    frames = utterance_frames([("speech", 0.5)], 16000)
    recognizer = openai.STT(base_url=server.base_url, api_key="dummy", use_realtime=False)
    try:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(APIStatusError) as failure:
                await recognizer.recognize(frames, conn_options=NO_RETRY)
            with pytest.raises(APIConnectionError):
                await recognizer.recognize(frames, conn_options=NO_RETRY)
            event = await recognizer.recognize(frames, conn_options=NO_RETRY)
    finally:
        await recognizer.aclose()
        await recognizer._client.close()  # see above: aclose() leaves it open
    assert failure.value.status_code == 500
    assert event.alternatives[0].text == "play some jazz"
    assert server.outcomes("transcriptions") == ["status_500", "drop", "ok"]
    assert len(server.transcription_requests) == 3


# -- deepgram.STT: live websocket -----------------------------------------------------------


@pytest.mark.parametrize(
    ("frame_rate", "stt_rate"), [(16000, 16000), (48000, 16000), (24000, 24000)]
)
async def test_deepgram_stream_turns_speech_into_events(
    dg: LoopbackDeepgram, http_session: aiohttp.ClientSession, frame_rate: int, stt_rate: int
) -> None:
    recognizer = deepgram.STT(
        base_url=dg.base_url, api_key="dummy", http_session=http_session, sample_rate=stt_rate
    )
    stream = recognizer.stream()
    script: list[Segment] = [
        ("silence", 0.3),
        ("speech", 1.0),
        ("silence", 0.5),
        ("speech", 0.6),
        ("silence", 0.5),
    ]
    for frame in utterance_frames(script, frame_rate):
        stream.push_frame(frame)
    try:
        events = await collect_until(stream, ends_of_speech(2))
        stream.end_input()  # Finalize, then CloseStream: answered with Metadata
        connection = dg.connections[0]
        await dg.wait_for(lambda: "Metadata" in connection.sent_types)
    finally:
        await stream.aclose()

    assert speech_flow(events) == [
        ("start_of_speech", ""),
        ("interim", "hello clara"),
        ("final", "hello clara"),
        ("end_of_speech", ""),
        ("start_of_speech", ""),
        ("interim", "what time"),
        ("final", "what time is it"),
        ("end_of_speech", ""),
    ]
    finals = [e for e in events if e.type == stt.SpeechEventType.FINAL_TRANSCRIPT]
    first = finals[0].alternatives[0]
    assert first.start_time == pytest.approx(0.3, abs=0.03)
    assert first.end_time == pytest.approx(1.3, abs=0.03)
    assert [str(w) for w in first.words or []] == ["hello", "clara"]
    assert first.language == "en-US"
    assert finals[1].alternatives[0].start_time == pytest.approx(1.8, abs=0.03)

    query = connection.query
    assert (query["encoding"], query["sample_rate"], query["channels"]) == (
        "linear16",
        str(stt_rate),
        "1",
    )
    assert (query["model"], query["language"], query["vad_events"]) == ("nova-3", "en-US", "true")
    assert connection.authorization == "Token dummy"
    assert connection.audio_bytes == pytest.approx(2.9 * stt_rate * 2, rel=0.02)
    assert connection.messages[0] == "KeepAlive"
    assert connection.messages[-2:] == ["Finalize", "CloseStream"]
    assert [m["speech_final"] for m in connection.finals[:2]] == [True, True]
    assert connection.sent_types[0] == "SpeechStarted"
    assert connection.sent_types[-1] == "Metadata"
    assert connection.sent[-1]["duration"] == pytest.approx(2.9, abs=0.03)


async def test_deepgram_finalize_closes_an_utterance(
    dg: LoopbackDeepgram, http_session: aiohttp.ClientSession
) -> None:
    recognizer = deepgram.STT(base_url=dg.base_url, api_key="dummy", http_session=http_session)
    stream = recognizer.stream()
    # the trailing silence is shorter than the endpoint: only the flush ends the utterance
    for frame in utterance_frames([("silence", 0.2), ("speech", 0.8), ("silence", 0.1)], 16000):
        stream.push_frame(frame)
    stream.flush()
    try:
        events = await collect_until(stream, ends_of_speech(1))
    finally:
        await stream.aclose()

    assert speech_flow(events)[-2:] == [("final", "hello clara"), ("end_of_speech", "")]
    final = dg.connections[0].finals[0]
    assert final["from_finalize"] is True
    assert "Finalize" in dg.connections[0].messages


async def test_deepgram_utterance_end_without_endpointing(
    dg: LoopbackDeepgram, http_session: aiohttp.ClientSession
) -> None:
    recognizer = deepgram.STT(
        base_url=dg.base_url,
        api_key="dummy",
        http_session=http_session,
        endpointing_ms=0,
        utterance_end_ms=1000,
    )
    stream = recognizer.stream()
    for frame in utterance_frames([("silence", 0.2), ("speech", 0.8), ("silence", 1.2)], 16000):
        stream.push_frame(frame)
    try:
        events = await collect_until(stream, ends_of_speech(1))
    finally:
        await stream.aclose()

    connection = dg.connections[0]
    assert connection.query["endpointing"] == "false"
    assert connection.query["utterance_end_ms"] == "1000"
    assert connection.finals[0]["speech_final"] is False  # no endpoint: the final alone…
    assert "UtteranceEnd" in connection.sent_types  # …does not end speech, UtteranceEnd does
    utterance_end = connection.sent[connection.sent_types.index("UtteranceEnd")]
    assert utterance_end["last_word_end"] == pytest.approx(1.0, abs=0.03)
    assert speech_flow(events)[-2:] == [("final", "hello clara"), ("end_of_speech", "")]


async def test_deepgram_refused_upgrade_is_retried(
    dg: LoopbackDeepgram, http_session: aiohttp.ClientSession
) -> None:
    dg.fail("status_500")
    recognizer = deepgram.STT(base_url=dg.base_url, api_key="dummy", http_session=http_session)
    errors: list[stt.STTError] = []
    recognizer.on("error", errors.append)
    stream = recognizer.stream()
    for frame in utterance_frames([("silence", 0.2), ("speech", 0.8), ("silence", 0.5)], 16000):
        stream.push_frame(frame)
    try:
        events = await collect_until(stream, ends_of_speech(1))
    finally:
        await stream.aclose()

    assert [c.outcome for c in dg.connections] == ["status_500", "closed"]
    assert len(errors) == 1 and errors[0].recoverable
    assert isinstance(errors[0].error, APIStatusError) and errors[0].error.status_code == 500
    assert ("final", "hello clara") in speech_flow(events)


async def test_deepgram_dropped_connection_reconnects(
    dg: LoopbackDeepgram, http_session: aiohttp.ClientSession
) -> None:
    dg.fail("drop")
    recognizer = deepgram.STT(base_url=dg.base_url, api_key="dummy", http_session=http_session)
    errors: list[stt.STTError] = []
    recognizer.on("error", errors.append)
    stream = recognizer.stream()
    try:
        for frame in utterance_frames([("silence", 0.2)], 16000):
            stream.push_frame(frame)
        # the first audio gets the socket cut; speak once the plugin has reconnected
        await dg.wait_for(lambda: len(dg.connections) == 2 and dg.open_connections())
        for frame in utterance_frames([("speech", 0.8), ("silence", 0.5)], 16000):
            stream.push_frame(frame)
        events = await collect_until(stream, ends_of_speech(1))
    finally:
        await stream.aclose()

    assert dg.connections[0].outcome == "drop"
    assert dg.connections[0].audio_chunks == 1
    assert len(errors) == 1 and errors[0].recoverable
    assert isinstance(errors[0].error, APIError)
    assert speech_flow(events)[-2:] == [("final", "hello clara"), ("end_of_speech", "")]


async def test_deepgram_hanging_upgrade_times_out(
    dg: LoopbackDeepgram, http_session: aiohttp.ClientSession
) -> None:
    dg.fail("hang")
    recognizer = deepgram.STT(base_url=dg.base_url, api_key="dummy", http_session=http_session)
    stream = recognizer.stream(conn_options=APIConnectOptions(max_retry=0, timeout=0.3))
    try:
        with pytest.raises(APIConnectionError):
            await collect_until(stream, lambda _: False)
    finally:
        await stream.aclose()
    assert [c.outcome for c in dg.connections] == ["hang"]


async def test_deepgram_prerecorded_recognize(
    dg: LoopbackDeepgram, http_session: aiohttp.ClientSession
) -> None:
    recognizer = deepgram.STT(base_url=dg.base_url, api_key="dummy", http_session=http_session)
    frames = utterance_frames([("silence", 0.3), ("speech", 0.7), ("silence", 0.2)], 16000)
    async with asyncio.timeout(TIMEOUT):
        event = await recognizer.recognize(frames, conn_options=NO_RETRY)
    assert event.type == stt.SpeechEventType.FINAL_TRANSCRIPT
    assert event.alternatives[0].text == "hello clara"
    assert event.alternatives[0].start_time == pytest.approx(0.3, abs=0.03)
    assert dg.prerecorded[0].outcome == "ok"


# -- the peers themselves -------------------------------------------------------------------


async def test_peers_close_cleanly_with_requests_in_flight() -> None:
    before = other_tasks()
    async with aiohttp.ClientSession() as session:
        async with LoopbackOpenAI() as server, LoopbackDeepgram() as deepgram_peer:
            server.fail("chat", "hang")

            async def hanging_chat() -> bytes:
                async with session.post(
                    f"{server.base_url}/chat/completions",
                    json={"model": "m", "messages": [], "stream": True},
                    headers={"Authorization": "Bearer dummy"},
                ) as response:
                    return await response.read()

            chat = asyncio.create_task(hanging_chat())
            await server.wait_for(lambda: server.count("chat") == 1)
            ws = await session.ws_connect(
                deepgram_peer.base_url, headers={"Authorization": "Token dummy"}
            )
            await deepgram_peer.wait_for(deepgram_peer.open_connections)
            received = asyncio.create_task(ws.receive())
            started = time.monotonic()
        closing_took = time.monotonic() - started

        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(chat, TIMEOUT)
        message = await asyncio.wait_for(received, TIMEOUT)
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert message.data == aiohttp.WSCloseCode.GOING_AWAY
        await ws.close()
    assert closing_took < 1.0  # no shutdown timeout waited out
    assert not server._handlers and not deepgram_peer._handlers
    assert other_tasks() <= before


def test_unknown_failures_are_refused() -> None:
    server = LoopbackOpenAI()
    with pytest.raises(ValueError, match="endpoint"):
        server.fail("embeddings", "drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode"):
        server.fail("chat", "slow")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode"):
        LoopbackDeepgram().fail("status_404")  # type: ignore[arg-type]
