"""Fake providers for the benchmarks, built on livekit's own base classes.

By default each one answers at once, so what a benchmark measures is livekit's (and
clara_voice's) turn handling, not a provider:

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
* :class:`bench._fake_replies.FakeLLM` and :class:`bench._fake_replies.FakeTTS`, the
  replying side, are in their own module.

Latencies (all default to 0: the behaviour above, unchanged), in seconds of loop (wall)
time; each is a float, or a ``(low, high)`` range drawn uniformly, once per request, from
the ``random.Random`` passed as ``rng`` (seed it, and share one between the providers of a
run, to make a run reproducible):

* ``FakeSTT(final_delay=...)``: between the end of speech as the STT sees it (livekit's
  ``StreamAdapter`` calling ``recognize`` at the VAD's end of speech) and the final
  transcript. The transcript is what had been heard when ``recognize`` was called.
* ``FakeStreamingSTT(final_delay=...)``: between its endpoint (``endpoint_silence`` of
  audio-time silence, or a flush) and the final transcript + ``END_OF_SPEECH``. The audio
  loop goes on meanwhile; events keep their order (a ``START_OF_SPEECH`` heard during the
  delay is sent after the delayed final), as a provider's single connection delivers them.
* ``FakeLLM(ttft=...)``: before the first chunk of the reply.
* ``FakeTTS(ttfb=...)``: before the first (and only) audio of each synthesis.

:data:`REALISTIC` holds ranges typical of hosted providers, as keyword arguments per
provider::

    rng = random.Random(7)
    FakeSTT(heard, rng=rng, **REALISTIC["stt"])
    FakeLLM(REPLY, rng=rng, **REALISTIC["llm"])
    FakeTTS(seconds=0.3, rng=rng, **REALISTIC["tts"])
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from typing import Any, Final

import numpy as np
from livekit import rtc
from livekit.agents import stt, utils
from livekit.agents.language import LanguageCode
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)

TranscriptSource = Callable[[], str]
"""Returns the words heard since its previous call ("" when none)."""

Latency = float | tuple[float, float]
"""Seconds, or a (low, high) range drawn uniformly from the provider's ``rng``."""

REALISTIC: Final[dict[str, dict[str, Latency]]] = {
    "stt": {"final_delay": (0.15, 0.30)},  # end of speech -> final transcript
    "llm": {"ttft": (0.30, 0.60)},  # request -> first token
    "tts": {"ttfb": (0.10, 0.20)},  # request -> first audio byte
}
"""Latencies of hosted providers, as keyword arguments of FakeSTT/FakeStreamingSTT, FakeLLM
and FakeTTS (each also takes ``rng=``)."""


class Delay:
    """A provider latency: fixed, or drawn from ``rng`` for each request."""

    def __init__(self, name: str, latency: Latency, rng: random.Random | None) -> None:
        if isinstance(latency, tuple):
            if len(latency) != 2:
                raise ValueError(f"{name} range must be (low, high), got {latency!r}")
            low, high = float(latency[0]), float(latency[1])
            if rng is None:
                raise ValueError(f"{name}={latency!r} is a range: pass rng=random.Random(seed)")
        else:
            low = high = float(latency)
        if not 0 <= low <= high or math.isinf(high):
            raise ValueError(f"{name} must be seconds >= 0 or a (low, high) range, got {latency!r}")
        self.low, self.high = low, high
        self._rng = rng
        self.drawn: list[float] = []
        """Every value drawn so far, in order."""

    def __bool__(self) -> bool:
        return self.high > 0

    def draw(self) -> float:
        value = self.low
        if self.high > self.low:
            assert self._rng is not None
            value = self._rng.uniform(self.low, self.high)
        self.drawn.append(value)
        return value

    @property
    def label(self) -> str:
        if self.high == self.low:
            return f"{round(self.low * 1000)}ms"
        return f"{round(self.low * 1000)}-{round(self.high * 1000)}ms"


def _final(text: str, language: str) -> stt.SpeechEvent:
    return stt.SpeechEvent(
        type=stt.SpeechEventType.FINAL_TRANSCRIPT,
        request_id=utils.shortuuid("fake_stt_"),
        alternatives=[stt.SpeechData(language=LanguageCode(language), text=text, confidence=1.0)],
    )


class FakeSTT(stt.STT[Any]):
    """A batch STT whose ``recognize`` returns the scripted transcript, ``final_delay`` late."""

    def __init__(
        self,
        transcripts: TranscriptSource,
        *,
        language: str = "en",
        final_delay: Latency = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        self._transcripts = transcripts
        self._language = language
        self.final_delay = Delay("final_delay", final_delay, rng)
        self.requests = 0

    @property
    def model(self) -> str:
        return "fake-batch" + (f"-final-{self.final_delay.label}" if self.final_delay else "")

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
        return await _recognized(self._transcripts, self._language, self.final_delay)


async def _recognized(
    transcripts: TranscriptSource, language: str, delay: Delay
) -> stt.SpeechEvent:
    event = _final(transcripts(), language)  # what was heard when the request came
    if delay:
        await asyncio.sleep(delay.draw())
    return event


class FakeStreamingSTT(stt.STT[Any]):
    """A streaming STT that endpoints on its own, like livekit's Deepgram plugin."""

    def __init__(
        self,
        transcripts: TranscriptSource,
        *,
        endpoint_silence: float = 0.3,
        threshold_dbfs: float = -40.0,
        language: str = "en",
        final_delay: Latency = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=False))
        self._transcripts = transcripts
        self.endpoint_silence = endpoint_silence
        self.threshold_dbfs = threshold_dbfs
        self._language = language
        self.final_delay = Delay("final_delay", final_delay, rng)
        self.endpoints = 0

    @property
    def model(self) -> str:
        model = f"fake-streaming-endpoint-{round(self.endpoint_silence * 1000)}ms"
        return model + (f"-final-{self.final_delay.label}" if self.final_delay else "")

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
        return await _recognized(self._transcripts, self._language, self.final_delay)

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
        # with a final_delay: events wait here, in order, until they are due (loop time)
        self._outbox: utils.aio.Chan[tuple[float, list[stt.SpeechEvent]]] | None = None
        self._last_due = 0.0

    async def _run(self) -> None:
        if not self._owner.final_delay:
            await self._listen()
            return
        outbox = self._outbox = utils.aio.Chan()
        deliver_atask = asyncio.create_task(self._deliver(outbox), name="fake_stt_deliver")
        try:
            await self._listen()
            outbox.close()
            await deliver_atask  # what was endpointed before the input ended still arrives
        finally:
            outbox.close()
            await utils.aio.cancel_and_wait(deliver_atask)

    async def _deliver(self, outbox: utils.aio.Chan[tuple[float, list[stt.SpeechEvent]]]) -> None:
        loop = asyncio.get_running_loop()
        async for due, events in outbox:
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            for event in events:
                self._event_ch.send_nowait(event)

    async def _listen(self) -> None:
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
        events = [_final(text, self._owner._language)] if text else []
        events.append(stt.SpeechEvent(type=stt.SpeechEventType.END_OF_SPEECH))
        delay = self._owner.final_delay
        self._send(*events, delay=delay.draw() if delay else 0.0)

    def _send(self, *events: stt.SpeechEvent, delay: float = 0.0) -> None:
        if self._outbox is None:
            for event in events:
                self._event_ch.send_nowait(event)
            return
        # never before what was sent earlier: one connection delivers in order
        due = max(asyncio.get_running_loop().time() + delay, self._last_due)
        self._last_due = due
        self._outbox.send_nowait((due, list(events)))


def _dbfs(frame: rtc.AudioFrame) -> float:
    samples = np.frombuffer(frame.data, dtype=np.int16).astype(np.float64)
    if samples.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(samples**2))) / 32768.0
    return 20 * math.log10(rms) if rms > 0 else -math.inf


__all__ = [
    "REALISTIC",
    "Delay",
    "FakeSTT",
    "FakeStreamingSTT",
    "Latency",
    "TranscriptSource",
]
