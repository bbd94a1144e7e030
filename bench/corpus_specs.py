"""What the turn-taking corpus says: its utterances as text, pauses, voices, rates, languages.

A :class:`Spec` is one utterance to render: its words with ``|`` where each pause goes, the
pauses, the kind of word before each pause (``place``) or, for a finished sentence, the kind
of word it ends on, its language, the voice family and voice that says it, and whether the
turn detector was tuned on it (``split``). :mod:`bench.corpus` renders the specs and
describes the truth they carry. Voices and rates are handed out in turn, so the build is
deterministic.

Voice families (:data:`FAMILIES`):

* ``espeak``: espeak-ng, every language; each phrase rendered on its own (the builder
  gives a phrase before a mid-sentence pause a trailing comma: continuing intonation);
* ``piper``: the Piper neural voice ``en_US-joe-medium`` (English): a sentence is rendered
  whole, with its natural prosody, and each pause inserted at a word boundary the model's
  own phoneme alignment gives, so the voice runs on into the pause as a speaker who stops
  to think does;
* ``human``: real recordings that registry packages ship (``bench/human_speech.py``), cut
  at word boundaries the same way.

English sentences are said by both ``espeak`` and ``piper``; German, Spanish and French by
``espeak`` (no neural voice of those languages is packaged on a registry here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from bench.corpus_texts import (
    BETWEEN_SENTENCES,
    COMPLETE,
    INTERNATIONAL,
    MID_SENTENCE,
    Kind,
    Row,
)

Category = Kind
CATEGORIES: tuple[Category, ...] = get_args(Category)
Family = Literal["espeak", "piper", "human"]
FAMILIES: tuple[Family, ...] = get_args(Family)
Split = Literal["tune", "heldout"]

# English espeak voices and rates are handed out in turn (8 and 5 are coprime)
VOICES = (
    "en-us",
    "en-gb",
    "en-gb-x-rp",
    "en-us+f3",
    "en-us+m3",
    "en-gb-scotland",
    "en-us+f2",
    "en-us-nyc",
)
RATES = (140, 155, 170, 185, 200)
LANGUAGE_VOICES = {
    "de": ("de", "de+f3", "de+m3"),
    "es": ("es", "es+f3", "es-419"),
    "fr": ("fr", "fr+f3", "fr-be"),
}
# two speakers' rates for the piper voice: Piper's length_scale (1.0 is the voice's own
# pace; 1.2 is a fifth slower), stored as the nominal words a minute of the corpus
PIPER_VOICE = "en_US-joe-medium"
PIPER_RATES = {170: 1.0, 140: 1.2}


@dataclass(frozen=True)
class Spec:
    """What to say: ``text`` with ``|`` where each of ``pauses`` (seconds) goes."""

    category: Category
    place: str
    """Mid-sentence: the kind of word before the pause; complete: the kind of word the
    sentence ends on; between sentences: ``sentence_end``."""
    text: str
    pauses: tuple[float, ...] = ()
    voice: str = "en-us"
    wpm: int = 170
    language: str = "en"
    family: Family = "espeak"
    split: Split = "tune"
    source: str = ""
    """Human recordings: ``recording@start-end`` (seconds) the utterance is cut from."""

    @property
    def phrases(self) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.text.split("|"))

    def __post_init__(self) -> None:
        if len(self.phrases) != len(self.pauses) + 1:
            raise ValueError(f"{self.text!r}: {len(self.pauses)} pause(s) for the '|' marks")
        if self.category == "complete" and self.pauses:
            raise ValueError(f"{self.text!r}: a complete utterance has no pause")
        if self.category != "complete" and not self.pauses:
            raise ValueError(f"{self.text!r}: a {self.category} utterance needs a pause")
        if any(not 0 < p < 5 for p in self.pauses):
            raise ValueError(f"{self.text!r}: pauses must lie in (0, 5) s")
        if (self.family == "human") != bool(self.source):
            raise ValueError(f"{self.text!r}: a source is given for human recordings only")


def _english(rows: Sequence[Row], family: Family, start: int) -> list[Spec]:
    specs = []
    for i, row in enumerate(rows, start=start):
        if family == "espeak":
            voice, wpm = VOICES[i % len(VOICES)], RATES[i % len(RATES)]
        else:
            voice, wpm = PIPER_VOICE, tuple(PIPER_RATES)[i % len(PIPER_RATES)]
        specs.append(
            Spec(row.category, row.place, row.text, row.pauses, voice, wpm, "en", family, row.split)
        )
    return specs


def _international(rows: Sequence[Row]) -> list[Spec]:
    specs = []
    for i, row in enumerate(rows):
        voices = LANGUAGE_VOICES[row.language]
        specs.append(
            Spec(
                row.category,
                row.place,
                row.text,
                row.pauses,
                voices[i % len(voices)],
                (150, 185)[i % 2],
                row.language,
                "espeak",
                row.split,
            )
        )
    return specs


def _human() -> list[Spec]:
    from bench.human_speech import HUMAN_ROWS

    return [
        Spec(
            row.category,
            row.place,
            row.text,
            row.pauses,
            row.speaker,
            0,
            "en",
            "human",
            "heldout",
            row.source,
        )
        for row in HUMAN_ROWS
    ]


ENGLISH: tuple[Row, ...] = (*COMPLETE, *MID_SENTENCE, *BETWEEN_SENTENCES)

DEFAULT_SPECS: tuple[Spec, ...] = (
    *_english(ENGLISH, "espeak", 0),
    *_english([r for r in ENGLISH if r.category != "between_sentences"], "piper", 0),
    *_international(INTERNATIONAL),
    *_human(),
)
"""Every utterance of the corpus, in build order (numbered from 1)."""


__all__ = [
    "CATEGORIES",
    "DEFAULT_SPECS",
    "FAMILIES",
    "LANGUAGE_VOICES",
    "PIPER_RATES",
    "PIPER_VOICE",
    "RATES",
    "VOICES",
    "Category",
    "Family",
    "Spec",
    "Split",
]
