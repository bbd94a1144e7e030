"""The turn-taking corpus as the benches read it: ``manifest.json`` and its utterances.

:mod:`bench.corpus` builds a corpus (and describes its truth fields); this module loads one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.corpus_texts import Kind as Category
from bench.wavio import read_wav, to_pcm16

SAMPLE_RATE = 24000
MANIFEST = "manifest.json"


class CorpusError(RuntimeError):
    """The corpus cannot be built or loaded; the message says why, on one line."""


@dataclass(frozen=True)
class Phrase:
    text: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Utterance:
    """One entry of ``manifest.json``: a file and the truth about it."""

    id: str
    file: str
    category: Category
    place: str
    voice: str
    wpm: int
    phrases: tuple[Phrase, ...]
    pauses_s: tuple[float, ...]
    transcript: str
    end_of_turn_s: float
    may_end_after_s: tuple[float, ...]
    directory: Path
    sample_rate: int = SAMPLE_RATE
    language: str = "en"
    family: str = "espeak"
    split: str = "tune"

    @property
    def path(self) -> Path:
        return self.directory / self.file

    def samples(self) -> np.ndarray:
        """The file's samples as int16 mono at ``sample_rate``."""
        return to_pcm16(read_wav(self.path), self.sample_rate)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "file": self.file,
            "category": self.category,
            "place": self.place,
            "voice": self.voice,
            "wpm": self.wpm,
            "phrases": [
                {"text": p.text, "start_s": p.start_s, "end_s": p.end_s} for p in self.phrases
            ],
            "pauses_s": list(self.pauses_s),
            "transcript": self.transcript,
            "end_of_turn_s": self.end_of_turn_s,
            "may_end_after_s": list(self.may_end_after_s),
            "language": self.language,
            "family": self.family,
            "split": self.split,
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any], *, directory: Path, sample_rate: int) -> Utterance:
        return cls(
            id=entry["id"],
            file=entry["file"],
            category=entry["category"],
            place=entry["place"],
            voice=entry["voice"],
            wpm=int(entry["wpm"]),
            phrases=tuple(
                Phrase(p["text"], float(p["start_s"]), float(p["end_s"])) for p in entry["phrases"]
            ),
            pauses_s=tuple(float(p) for p in entry["pauses_s"]),
            transcript=entry["transcript"],
            end_of_turn_s=float(entry["end_of_turn_s"]),
            may_end_after_s=tuple(float(t) for t in entry["may_end_after_s"]),
            directory=directory,
            sample_rate=sample_rate,
            language=entry.get("language", "en"),
            family=entry.get("family", "espeak"),
            split=entry.get("split", "tune"),
        )


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorpusError(
            f"no {MANIFEST} in {directory}: build it with "
            f"`.venv/bin/python -m bench.corpus --out {directory}`"
        ) from None
    except (OSError, ValueError) as exc:
        raise CorpusError(f"cannot read {path}: {exc}") from None
    return manifest


def load_corpus(directory: Path | str) -> list[Utterance]:
    """The utterances of the corpus in ``directory``, in manifest order."""
    directory = Path(directory)
    manifest = _read_manifest(directory)
    try:
        rate = int(manifest["sample_rate"])
        return [
            Utterance.from_json(entry, directory=directory, sample_rate=rate)
            for entry in manifest["utterances"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise CorpusError(f"{directory / MANIFEST}: malformed ({exc!r})") from None


__all__ = ["MANIFEST", "SAMPLE_RATE", "CorpusError", "Phrase", "Utterance", "load_corpus"]
