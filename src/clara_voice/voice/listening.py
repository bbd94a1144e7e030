"""The ``combined`` end of turn: the words heard so far and how the voice sounded, together.

Measured on the turn-taking corpus (docs/benchmarks.md#turn-taking), neither the words nor
livekit's bundled audio model (``turn-detector-v1-mini``: the last 1.2 s of the voice, 14
languages) can tell a finished sentence from a pause after a noun, a verb or a pronoun
("Tell him | that I will be late") well enough to answer early without cutting people off.
So :class:`ListeningTurnDetector` does the reverse of a fast path: every turn waits
``min_endpointing_delay`` (0.9 s by default, longer than the pauses people make inside a
sentence), and the wait grows to ``max_endpointing_delay`` only when the evidence says the
sentence goes on:

* the words (:func:`clara_voice.voice.turn_words.words_verdict`): a continuation mark from
  the STT, a hesitation, or, in English, a last word that cannot end a sentence;
* the sound: the audio model's end-of-turn probability on the voice up to 0.2 s after it
  stopped is far below livekit's own threshold for the language (a quarter of it,
  ``LOW_FACTOR``): the voice ran on. Languages the model does not know rely on the words
  and the wait.

It is livekit's ``_TurnDetector`` protocol (livekit chooses ``min_endpointing_delay`` for a
probability at or above :data:`THRESHOLD`, else ``max_endpointing_delay``), and it supports
every language: livekit never falls back to "no judgement" for a language a detector does
not list. The audio reaches it through :meth:`ListeningTurnDetector.hear`, which the
participant's ``ClaraAssistant`` calls with each microphone frame on its way to the STT.
One detector per participant session; closing the session drops it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Final, Protocol

import numpy as np
from livekit import rtc
from livekit.agents import llm
from livekit.agents.language import LanguageCode

from clara_voice.logging import get_logger
from clara_voice.voice.turn_words import Verdict, words_verdict

OPEN: Final = 0.0
FINISHED: Final = 1.0
THRESHOLD: Final = 0.5
LOW_FACTOR: Final = 0.25
"""The audio says "goes on" below this fraction of livekit's threshold for the language
(0.09 for English). At 0.4 it sent 9-15 % of the corpus's finished sentences to the longer
wait and saved no pause from a cut-off at the 0.9 s wait; at 0.25, about 3 %."""
MODEL_RATE: Final = 16000
WINDOW_S: Final = 1.2  # what turn-detector-v1-mini takes
AFTER_SPEECH_S: Final = 0.2  # the silence livekit gives it after the voice stops
KEEP_S: Final = 3.0
VOICED_RATIO: Final = 0.1  # a 10 ms window at -20 dB of the loudest kept one is voice
PREDICT_TIMEOUT: Final = 0.5

_log = get_logger("clara_voice.voice.listening")


class AudioTurnModel(Protocol):
    """An end-of-turn model on audio: livekit's ``local_inference.EOT`` has this shape."""

    def predict(self, pcm: np.ndarray) -> float: ...


def model_thresholds() -> dict[str, float]:
    """livekit's per-language thresholds of turn-detector-v1-mini (its 14 languages)."""
    from livekit.agents.inference.eot.languages import LOCAL_LANGUAGES

    return dict(LOCAL_LANGUAGES)


class AudioTail:
    """The last ``KEEP_S`` seconds of a participant's voice, mono 16 kHz int16."""

    def __init__(self) -> None:
        self._samples = np.zeros(0, np.int16)
        self._resampler: rtc.AudioResampler | None = None
        self._format: tuple[int, int] | None = None

    def push(self, frame: rtc.AudioFrame) -> None:
        if self._format != (frame.sample_rate, frame.num_channels):
            self._format = (frame.sample_rate, frame.num_channels)
            self._resampler = None
            if frame.sample_rate != MODEL_RATE or frame.num_channels != 1:
                self._resampler = rtc.AudioResampler(
                    input_rate=frame.sample_rate,
                    output_rate=MODEL_RATE,
                    num_channels=frame.num_channels,
                    quality=rtc.AudioResamplerQuality.QUICK,
                )
        frames = [frame] if self._resampler is None else self._resampler.push(frame)
        for out in frames:
            pcm = np.frombuffer(out.data, dtype=np.int16)
            if out.num_channels > 1:
                pcm = pcm.reshape(-1, out.num_channels).mean(axis=1).astype(np.int16)
            self._samples = np.concatenate([self._samples, pcm])[-round(KEEP_S * MODEL_RATE) :]

    def window(self) -> np.ndarray | None:
        """Up to 1.2 s of voice ending 0.2 s after its last voiced 10 ms (None: no voice)."""
        size = MODEL_RATE // 100
        count = self._samples.size // size
        if count == 0:
            return None
        x = self._samples[: count * size].astype(np.float64).reshape(count, size)
        rms = np.sqrt(np.mean(x**2, axis=1))
        if rms.max() <= 0:
            return None
        last = int(np.flatnonzero(rms >= VOICED_RATIO * rms.max())[-1])
        end = min(self._samples.size, (last + 1) * size + round(AFTER_SPEECH_S * MODEL_RATE))
        window = self._samples[max(0, end - round(WINDOW_S * MODEL_RATE)) : end]
        # what was not heard yet is silence to come: the model wants its 0.2 s after the voice
        missing = (last + 1) * size + round(AFTER_SPEECH_S * MODEL_RATE) - end
        return np.concatenate([window, np.zeros(max(0, missing), np.int16)])


class ListeningTurnDetector:
    """livekit's ``_TurnDetector`` protocol, answered from the words and the sound."""

    def __init__(
        self,
        *,
        audio_model: Callable[[], AudioTurnModel] | None,
        language: str | None = None,
        thresholds: dict[str, float] | None = None,
    ) -> None:
        self._make_model = audio_model
        self._model: AudioTurnModel | None = None
        self._model_lock = threading.Lock()
        self._language = language
        self._thresholds = model_thresholds() if thresholds is None else thresholds
        self.tail = AudioTail()
        self.last_decision: dict[str, object] = {}
        """Why the last turn waited as it did (for logs and the bench)."""

    @property
    def model(self) -> str:
        return "clara-listening"

    @property
    def provider(self) -> str:
        return "clara_voice"

    def hear(self, frame: rtc.AudioFrame) -> None:
        """A microphone frame, on its way to the STT."""
        self.tail.push(frame)

    async def unlikely_threshold(self, language: LanguageCode | None) -> float | None:
        return THRESHOLD

    async def supports_language(self, language: LanguageCode | None) -> bool:
        if language:  # livekit asks with the STT's language right before it predicts
            self._language = str(language)
        return True

    async def predict_end_of_turn(
        self,
        chat_ctx: llm.ChatContext,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (livekit's protocol)
    ) -> float:
        """``OPEN`` when the words or the sound say the sentence goes on, else ``FINISHED``."""
        text = _last_user_text(chat_ctx)
        verdict = words_verdict(text, self._language)
        probability = None
        if verdict != "open":
            probability = await self._audio_probability(timeout or PREDICT_TIMEOUT)
        low = low_probability(self._language, self._thresholds)
        decision = OPEN if goes_on(verdict, probability, low) else FINISHED
        self.last_decision = {
            "words": verdict,
            "probability": probability,
            "low": low,
            "language": self._language,
            "decision": "open" if decision == OPEN else "patient",
        }
        _log.debug("end of turn judged", extra=self.last_decision)
        return decision

    async def _audio_probability(self, bound: float) -> float | None:
        if self._make_model is None or low_probability(self._language, self._thresholds) is None:
            return None
        window = self.tail.window()
        if window is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._predict, window), bound)
        except TimeoutError:
            _log.warning("audio end-of-turn model too slow, judging by the words")
        except Exception as exc:
            _log.warning("audio end-of-turn model failed", extra={"error": repr(exc)})
        return None

    def _predict(self, window: np.ndarray) -> float:
        # in a worker thread: loading the model (when no prewarm did) never holds the loop
        with self._model_lock:
            if self._model is None:
                assert self._make_model is not None
                self._model = self._make_model()
            model = self._model
        return float(model.predict(window))


def low_probability(language: str | None, thresholds: dict[str, float]) -> float | None:
    """Below this end-of-turn probability the voice ran on (None: a language the audio
    model does not know)."""
    threshold = thresholds.get((language or "en").split("-")[0].lower())
    return None if threshold is None else threshold * LOW_FACTOR


def goes_on(words: Verdict, probability: float | None, low: float | None) -> bool:
    """The decision: the words say the sentence goes on, or the sound does."""
    return words == "open" or (probability is not None and low is not None and probability < low)


def _last_user_text(chat_ctx: llm.ChatContext) -> str:
    for item in reversed(chat_ctx.items):
        if item.type == "message" and item.role == "user":
            return item.text_content or ""
    return ""


def bundled_audio_model() -> AudioTurnModel:
    """livekit's turn-detector-v1-mini, in this process (its weights ship with livekit)."""
    from livekit.local_inference import EOT

    model: AudioTurnModel = EOT()
    return model


__all__ = [
    "FINISHED",
    "LOW_FACTOR",
    "OPEN",
    "THRESHOLD",
    "AudioTail",
    "AudioTurnModel",
    "ListeningTurnDetector",
    "bundled_audio_model",
    "goes_on",
    "low_probability",
    "model_thresholds",
]
