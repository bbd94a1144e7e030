"""What the turn bench says to the agent, and what its fake STT hears of it.

A :class:`Speech` is an utterance as 20 ms frames at 24 kHz with its truth: the voiced
phrases (start and end, in seconds), the words of each spread evenly over it (a word is
heard once the frame its end falls in has been released), where the turn ends, and where
ending it would not be a cut-off. It comes from a corpus utterance (:func:`corpus_speech`,
exact to the sample) or from any PCM WAV file with its transcript (:func:`file_speech`,
phrases found by energy).

:class:`MarkedMic` releases the frames in real time and notes when the last voiced frame
went out; :class:`Heard` is the fake STT's script: the words whose audio has been released,
each once.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from livekit import rtc

from bench.utterances import Utterance
from bench.wavio import read_wav, to_pcm16
from testkit.audio import WavAudioInput

SAMPLE_RATE = 24000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
LEAD_SILENCE = 0.2
VOICED_THRESHOLD = 0.02  # 10 ms RMS above 2 % of the loudest window is voiced
PHRASE_GAP = 0.15  # a silence this long splits a file into phrases


@dataclass(frozen=True)
class Speech:
    """An utterance as 20 ms frames, with what the fake STT may say and when."""

    name: str
    category: str
    frames: tuple[rtc.AudioFrame, ...]
    words: tuple[tuple[int, str], ...]
    """(index of the frame in which the word ends, word), in order."""
    phrases: tuple[tuple[float, float], ...]
    """(start, end) seconds of each voiced phrase within the utterance."""
    may_end_after: tuple[float, ...] = ()
    """Seconds into the utterance after which ending the turn is not a cut-off (the end of
    a complete first sentence); the end of the last phrase always is."""
    language: str = "en"
    family: str = "file"
    place: str = ""
    split: str = ""
    texts: tuple[str, ...] = ()
    """The text of each phrase (what an STT that knows the corpus hears)."""

    @property
    def duration(self) -> float:
        return len(self.frames) * FRAME_MS / 1000

    @property
    def eos_offset(self) -> float:
        return self.phrases[-1][1]

    @property
    def eos_frame(self) -> int:
        """The frame holding the last voiced sample."""
        return _frame_of(self.eos_offset)

    @property
    def transcript(self) -> str:
        return " ".join(word for _, word in self.words)

    def pause_ends(self) -> list[float]:
        """Where each pause ends (the start of every phrase but the first)."""
        return [start for start, _ in self.phrases[1:]]

    def describe(self) -> dict[str, Any]:
        gaps = [b[0] - a[1] for a, b in zip(self.phrases, self.phrases[1:], strict=False)]
        return {
            "name": self.name,
            "category": self.category,
            "transcript": self.transcript,
            "phrases_s": [[round(a, 3), round(b, 3)] for a, b in self.phrases],
            "pauses_s": [round(g, 3) for g in gaps],
        }


def _frame_of(seconds: float) -> int:
    return max(0, math.ceil(seconds * SAMPLE_RATE) - 1) // FRAME_SAMPLES


def _frames_of(samples: np.ndarray) -> tuple[rtc.AudioFrame, ...]:
    padded = np.concatenate(
        [samples.astype(np.int16), np.zeros(-len(samples) % FRAME_SAMPLES, dtype=np.int16)]
    )
    return tuple(
        rtc.AudioFrame(padded[i : i + FRAME_SAMPLES].tobytes(), SAMPLE_RATE, 1, FRAME_SAMPLES)
        for i in range(0, len(padded), FRAME_SAMPLES)
    )


def _word_ends(
    phrases: Sequence[tuple[float, float]], texts: Sequence[str]
) -> tuple[tuple[int, str], ...]:
    """Each phrase's words spread evenly over it; a word is heard once its frame is."""
    words: list[tuple[int, str]] = []
    for (start, end), text in zip(phrases, texts, strict=True):
        tokens = text.split()
        for k, token in enumerate(tokens):
            words.append((_frame_of(start + (k + 1) / len(tokens) * (end - start)), token))
    return tuple(words)


def corpus_speech(utterance: Utterance) -> Speech:
    """A corpus utterance (24 kHz mono, with its exact phrase boundaries)."""
    if utterance.sample_rate != SAMPLE_RATE:
        raise ValueError(f"{utterance.file}: {utterance.sample_rate} Hz, not {SAMPLE_RATE}")
    phrases = tuple((p.start_s, p.end_s) for p in utterance.phrases)
    return Speech(
        name=utterance.id,
        category=utterance.category,
        frames=_frames_of(utterance.samples()),
        words=_word_ends(phrases, [p.text for p in utterance.phrases]),
        phrases=phrases,
        may_end_after=utterance.may_end_after_s,
        language=utterance.language,
        family=utterance.family,
        place=utterance.place,
        split=utterance.split,
        texts=tuple(p.text for p in utterance.phrases),
    )


def file_speech(path: Path, transcript: str) -> Speech:
    """Any PCM WAV (any rate, mono or stereo); its phrases are its voiced stretches (gaps of
    0.15 s or more split them), the transcript's words shared out over them by duration."""
    tokens = transcript.split()
    if not tokens:
        raise ValueError("the transcript is empty")
    pcm = to_pcm16(read_wav(path), SAMPLE_RATE)
    samples = np.concatenate([np.zeros(round(LEAD_SILENCE * SAMPLE_RATE), np.int16), pcm])
    size = SAMPLE_RATE // 100
    count = samples.size // size
    if count == 0:
        raise ValueError(f"{path}: shorter than 10 ms")
    windows = samples[: count * size].astype(np.float64).reshape(count, size)
    rms = np.sqrt(np.mean(windows**2, axis=1))
    if rms.max() == 0:
        raise ValueError(f"{path}: silent")
    voiced = np.flatnonzero(rms > VOICED_THRESHOLD * rms.max())
    phrases: list[tuple[float, float]] = []
    start = prev = int(voiced[0])
    for window in voiced[1:]:
        if (window - prev - 1) * size / SAMPLE_RATE >= PHRASE_GAP:
            phrases.append((start * size / SAMPLE_RATE, (prev + 1) * size / SAMPLE_RATE))
            start = int(window)
        prev = int(window)
    phrases.append((start * size / SAMPLE_RATE, (prev + 1) * size / SAMPLE_RATE))
    total = sum(b - a for a, b in phrases)
    texts: list[str] = []
    taken, spoken = 0, 0.0
    for a, b in phrases:
        spoken += b - a
        upto = round(len(tokens) * spoken / total)
        texts.append(" ".join(tokens[taken:upto]) or tokens[min(taken, len(tokens) - 1)])
        taken = upto
    return Speech(
        name=path.name,
        category="file",
        frames=_frames_of(samples),
        words=_word_ends(phrases, texts),
        phrases=tuple(phrases),
    )


class MarkedMic(WavAudioInput):
    """``WavAudioInput`` that notes the loop time at which each utterance frame is released."""

    def __init__(self, speech: Speech) -> None:
        super().__init__(sample_rate=SAMPLE_RATE, frame_ms=FRAME_MS, label="bench-mic")
        self.speech = speech
        self._position_of = {id(frame): i for i, frame in enumerate(speech.frames)}
        self.heard = 0
        """Utterance frames released so far."""
        self.released_at: dict[int, float] = {}
        """Loop time at which each utterance frame went out."""

    @property
    def eos_at(self) -> float | None:
        """When the frame holding the last voiced sample was released."""
        return self.released_at.get(self.speech.eos_frame)

    def at(self, seconds: float) -> float | None:
        """The loop time at which the audio ``seconds`` into the utterance went out."""
        return self.released_at.get(_frame_of(seconds))

    async def __anext__(self) -> rtc.AudioFrame:
        frame = await super().__anext__()
        index = self._position_of.get(id(frame))
        if index is not None:
            self.heard = index + 1
            self.released_at[index] = asyncio.get_running_loop().time()
        return frame


class Recognized:
    """A recognizer's script: what Whisper heard of the phrases released since the last call.

    ``runs`` maps ``"i-j"`` (a run of consecutive phrases) to Whisper's text of that stretch
    of audio (``bench/recognize.py``). Each call answers for the phrases whose last sample
    the microphone has released and that no earlier call answered for, as one run: the
    segment a VAD cut around them.
    """

    def __init__(self, mic: MarkedMic, runs: dict[str, str]) -> None:
        self._mic = mic
        self._runs = runs
        self._next = 0

    def __call__(self) -> str:
        speech = self._mic.speech
        done = self._next
        while done < len(speech.phrases) and _frame_of(speech.phrases[done][1]) < self._mic.heard:
            done += 1
        if done == self._next:
            return ""
        text = self._runs.get(f"{self._next}-{done - 1}", "")
        self._next = done
        return text


class Heard:
    """The fake STT's script: the words whose audio the microphone has released, once each."""

    def __init__(self, mic: MarkedMic) -> None:
        self._mic = mic
        self._next = 0

    def __call__(self) -> str:
        words = self._mic.speech.words
        said: list[str] = []
        while self._next < len(words) and words[self._next][0] < self._mic.heard:
            said.append(words[self._next][1])
            self._next += 1
        return " ".join(said)


__all__ = [
    "FRAME_MS",
    "SAMPLE_RATE",
    "Heard",
    "MarkedMic",
    "Recognized",
    "Speech",
    "corpus_speech",
    "file_speech",
]
