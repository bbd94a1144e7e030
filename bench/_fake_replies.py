"""The replying fakes of the benchmarks: an LLM and a TTS on livekit's own base classes.

* :class:`FakeLLM` streams one fixed reply as a single ``ChatChunk``, ``ttft`` seconds after
  the request.
* :class:`FakeTTS` is a batch TTS returning a fixed short tone for any text (livekit wraps
  it in its sentence-splitting ``tts.StreamAdapter``), ``ttfb`` seconds after the request.

Latencies are as in :mod:`bench._fakes` (a float, or a range drawn from ``rng``).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import numpy as np
from livekit.agents import llm, tts, utils
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)

from bench._fakes import Delay, Latency

TTS_SAMPLE_RATE = 24000


class FakeLLM(llm.LLM[Any]):
    """An LLM that streams ``reply`` as one chunk, ``ttft`` seconds after the request."""

    def __init__(
        self, reply: str, *, ttft: Latency = 0.0, rng: random.Random | None = None
    ) -> None:
        super().__init__()
        self.reply = reply
        self.ttft = Delay("ttft", ttft, rng)
        self.requests = 0

    @property
    def model(self) -> str:
        return "fake-llm" + (f"-ttft-{self.ttft.label}" if self.ttft else "")

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
        self._ttft = owner.ttft.draw() if owner.ttft else 0.0

    async def _run(self) -> None:
        if self._ttft:
            await asyncio.sleep(self._ttft)
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
    """A batch TTS that returns ``seconds`` of tone for any text, ``ttfb`` after the request."""

    def __init__(
        self,
        *,
        seconds: float = 0.3,
        ttfb: Latency = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=TTS_SAMPLE_RATE,
            num_channels=1,
        )
        self.audio = tone(seconds)
        self.ttfb = Delay("ttfb", ttfb, rng)
        self.requests = 0

    @property
    def model(self) -> str:
        return "fake-tts" + (f"-ttfb-{self.ttfb.label}" if self.ttfb else "")

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
        self._ttfb = tts.ttfb.draw() if tts.ttfb else 0.0

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        if self._ttfb:
            await asyncio.sleep(self._ttfb)
        output_emitter.initialize(
            request_id=utils.shortuuid("fake_tts_"),
            sample_rate=TTS_SAMPLE_RATE,
            num_channels=1,
            mime_type="audio/pcm",
        )
        output_emitter.push(self._audio)
        output_emitter.flush()


__all__ = ["TTS_SAMPLE_RATE", "FakeLLM", "FakeTTS", "tone"]
