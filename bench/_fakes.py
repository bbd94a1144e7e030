"""Zero-latency providers for the benchmarks, built on livekit's own base classes.

Each one answers at once, so what a benchmark measures is livekit's (and clara_voice's)
turn handling, not a provider:

* :class:`FakeSTT` is a batch STT (``streaming=False``): ``AgentSession`` wraps it in
  livekit's ``stt.StreamAdapter``, which segments the audio with the session's VAD and calls
  ``recognize`` at each VAD end of speech; ``recognize`` returns at once what the
  ``transcripts`` callable says was heard since the previous call.
* :class:`FakeStreamingSTT` is a streaming STT shaped like livekit's Deepgram plugin: it
  listens with an energy detector (a frame at or above ``threshold_dbfs`` RMS is speech)
  and, once ``endpoint_silence`` seconds of audio-time silence follow speech, emits a final
  transcript then ``END_OF_SPEECH`` (Deepgram's ``speech_final``), with no
  ``speech_end_time``, as that plugin does. It is what ``turn_detection="stt"`` means with
  a provider that does its own endpointing.
* :class:`FakeLLM` streams one fixed reply as a single ``ChatChunk``.
* :class:`FakeTTS` is a batch TTS returning a fixed short tone for any text (livekit wraps
  it in its sentence-splitting ``tts.StreamAdapter``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import llm, stt, tts, utils
from livekit.agents.language import LanguageCode
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)

TranscriptSource = Callable[[], str]
"""Returns the words heard since its previous call ("" when none)."""

TTS_SAMPLE_RATE = 24000


def _final(text: str, language: str) -> stt.SpeechEvent:
    return stt.SpeechEvent(
        type=stt.SpeechEventType.FINAL_TRANSCRIPT,
        request_id=utils.shortuuid("fake_stt_"),
        alternatives=[stt.SpeechData(language=LanguageCode(language), text=text, confidence=1.0)],
    )


class FakeSTT(stt.STT[Any]):
    """A batch STT whose ``recognize`` returns the scripted transcript instantly."""

    def __init__(self, transcripts: TranscriptSource, *, language: str = "en") -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        self._transcripts = transcripts
        self._language = language
        self.requests = 0

    @property
    def model(self) -> str:
        return "fake-batch"

    @property
    def provider(self) -> str:
        return "bench"

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        self.requests += 1
        return _final(self._transcripts(), self._language)


class FakeStreamingSTT(stt.STT[Any]):
    """A streaming STT that endpoints on its own, like livekit's Deepgram plugin."""

    def __init__(
        self,
        transcripts: TranscriptSource,
        *,
        endpoint_silence: float = 0.3,
        threshold_dbfs: float = -40.0,
        language: str = "en",
    ) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=False))
        self._transcripts = transcripts
        self.endpoint_silence = endpoint_silence
        self.threshold_dbfs = threshold_dbfs
        self._language = language
        self.endpoints = 0

    @property
    def model(self) -> str:
        return f"fake-streaming-endpoint-{round(self.endpoint_silence * 1000)}ms"

    @property
    def provider(self) -> str:
        return "bench"

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        return _final(self._transcripts(), self._language)

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        return _EndpointingStream(self, conn_options=conn_options)


class _EndpointingStream(stt.RecognizeStream):
    def __init__(self, owner: FakeStreamingSTT, *, conn_options: APIConnectOptions) -> None:
        super().__init__(stt=owner, conn_options=conn_options)
        self._owner = owner
        self._speaking = False
        self._silence = 0.0  # audio time since the last voiced frame

    async def _run(self) -> None:
        async for item in self._input_ch:
            if isinstance(item, self._FlushSentinel):
                if self._speaking:  # Deepgram's Finalize: what was heard becomes final
                    self._endpoint()
                continue
            if _dbfs(item) >= self._owner.threshold_dbfs:
                self._silence = 0.0
                if not self._speaking:
                    self._speaking = True
                    self._send(stt.SpeechEvent(type=stt.SpeechEventType.START_OF_SPEECH))
            elif self._speaking:
                self._silence += item.duration
                if self._silence >= self._owner.endpoint_silence:
                    self._endpoint()

    def _endpoint(self) -> None:
        self._speaking = False
        self._owner.endpoints += 1
        text = self._owner._transcripts()
        if text:
            self._send(_final(text, self._owner._language))
        self._send(stt.SpeechEvent(type=stt.SpeechEventType.END_OF_SPEECH))

    def _send(self, event: stt.SpeechEvent) -> None:
        self._event_ch.send_nowait(event)


def _dbfs(frame: rtc.AudioFrame) -> float:
    samples = np.frombuffer(frame.data, dtype=np.int16).astype(np.float64)
    if samples.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(samples**2))) / 32768.0
    return 20 * math.log10(rms) if rms > 0 else -math.inf


class FakeLLM(llm.LLM[Any]):
    """An LLM that streams ``reply`` at once, as one chunk."""

    def __init__(self, reply: str) -> None:
        super().__init__()
        self.reply = reply
        self.requests = 0

    @property
    def model(self) -> str:
        return "fake-llm"

    @property
    def provider(self) -> str:
        return "bench"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        self.requests += 1
        return _FakeLLMStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class _FakeLLMStream(llm.LLMStream):
    def __init__(
        self,
        owner: FakeLLM,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(owner, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._reply = owner.reply

    async def _run(self) -> None:
        request_id = utils.shortuuid("fake_llm_")
        self._event_ch.send_nowait(
            llm.ChatChunk(
                id=request_id, delta=llm.ChoiceDelta(role="assistant", content=self._reply)
            )
        )
        words = len(self._reply.split())
        self._event_ch.send_nowait(
            llm.ChatChunk(
                id=request_id,
                usage=llm.CompletionUsage(
                    completion_tokens=words, prompt_tokens=0, total_tokens=words
                ),
            )
        )


def tone(seconds: float, *, sample_rate: int = TTS_SAMPLE_RATE, hz: float = 440.0) -> bytes:
    """``seconds`` of a sine at a tenth of full scale, s16le mono, with 5 ms fades."""
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    wave = 0.1 * np.sin(2 * np.pi * hz * t)
    fade = min(n // 2, round(0.005 * sample_rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        wave[:fade] *= ramp
        wave[n - fade :] *= ramp[::-1]
    return (wave * 32767).astype(np.int16).tobytes()


class FakeTTS(tts.TTS[Any]):
    """A batch TTS that returns ``seconds`` of tone for any text, instantly."""

    def __init__(self, *, seconds: float = 0.3) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=TTS_SAMPLE_RATE,
            num_channels=1,
        )
        self.audio = tone(seconds)
        self.requests = 0

    @property
    def model(self) -> str:
        return "fake-tts"

    @property
    def provider(self) -> str:
        return "bench"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        self.requests += 1
        return _FakeChunkedStream(tts=self, input_text=text, conn_options=conn_options)


class _FakeChunkedStream(tts.ChunkedStream):
    def __init__(self, *, tts: FakeTTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._audio = tts.audio

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid("fake_tts_"),
            sample_rate=TTS_SAMPLE_RATE,
            num_channels=1,
            mime_type="audio/pcm",
        )
        output_emitter.push(self._audio)
        output_emitter.flush()


__all__ = [
    "TTS_SAMPLE_RATE",
    "FakeLLM",
    "FakeSTT",
    "FakeStreamingSTT",
    "FakeTTS",
    "TranscriptSource",
    "tone",
]
