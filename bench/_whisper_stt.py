"""A real recognizer as a livekit batch STT: faster-whisper on each segment, on this CPU.

``WhisperSTT`` is what a self-hosted OpenAI-compatible Whisper server does for livekit's
pipeline, in process: ``AgentSession`` wraps it in ``stt.StreamAdapter``, which cuts the
microphone audio at each VAD end of speech and calls ``recognize`` with that segment; the
segment is transcribed by Whisper (``testkit.speech_models``) in a worker thread, so the
transcript arrives after the real decoding time of this machine. One model is shared by
every session of a bench run (it decodes one segment at a time).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import stt, utils
from livekit.agents.language import LanguageCode
from livekit.agents.types import NOT_GIVEN, APIConnectOptions, NotGivenOr

from testkit.speech_models import Whisper


class WhisperSTT(stt.STT[Any]):
    def __init__(self, whisper: Whisper, *, language: str = "en") -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        self._whisper = whisper
        self._language = language
        self.decode_seconds: list[float] = []

    @property
    def model(self) -> str:
        return f"whisper-{self._whisper.name}"

    @property
    def provider(self) -> str:
        return "faster-whisper"

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        frame = rtc.combine_audio_frames(buffer)
        samples = np.frombuffer(frame.data, dtype=np.int16)
        if frame.num_channels > 1:
            samples = samples.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
        loop = asyncio.get_running_loop()
        started = loop.time()
        heard = await asyncio.to_thread(
            self._whisper.transcribe, samples, frame.sample_rate, language=self._language
        )
        self.decode_seconds.append(loop.time() - started)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=utils.shortuuid("whisper_"),
            alternatives=[
                stt.SpeechData(
                    language=LanguageCode(self._language), text=heard.text, confidence=1.0
                )
            ],
        )


__all__ = ["WhisperSTT"]
