"""A turn-taking corpus: espeak-ng utterances whose pauses and ends are known to the sample.

Turn-taking is measured on two questions: how fast the agent answers a finished turn, and
whether it cuts the user off at a pause that is not the end of the turn. Each utterance is
made of phrases rendered separately by ``espeak-ng``, resampled to 24 kHz (without dither,
by ``bench.wavio.resample``: livekit's resampler dithers, which would make every build
differ), each trimmed to its voiced span (10 ms windows whose RMS exceeds 2 %
of the phrase's loudest window: the rule of ``testkit.audio.voiced_span``), then joined with
exact digital silence. So every boundary is a sample position, not an estimate. Categories:

* ``complete``: one complete sentence or question, no pause. The reply latency case.
* ``mid_sentence``: a sentence with one or two pauses (0.2–0.9 s) where it cannot end;
  ``place`` says where: after an ``article`` ("I would like to book a … table for two"), a
  ``preposition`` ("Can you send it to … my office"), a ``conjunction`` ("I need milk
  and … some bread"), "for"/"to" ``before_number`` ("a table for … two people"), a
  ``comma`` ("Well, … I think so"), inside a number (``mid_number``) or a ``list``. Ending
  the turn at any of these pauses is a cut-off. Phrases followed by such a pause are
  rendered with a trailing comma, so espeak-ng keeps a continuing intonation instead of a
  sentence-final fall (the recorded text has no such comma).
* ``between_sentences``: two complete sentences with a 0.2–0.9 s pause between them ("I
  need a taxi. … It is for the airport."). Ending the turn in the pause is not wrong, only
  early; a bench reports these separately.

Truth fields of each utterance in ``manifest.json`` (times in seconds from the start of its
file, exact multiples of 1/24000):

* ``phrases``: ``text``, ``start_s`` (first sample of the phrase), ``end_s`` (one past its
  last sample). Everything outside the phrases is digital silence (all zeros).
* ``pauses_s``: the silences between consecutive phrases.
* ``end_of_turn_s``: the end of the last voiced sample, ``phrases[-1].end_s``.
* ``may_end_after_s``: times at which ending the turn is *not* a cut-off: empty for
  ``complete`` and ``mid_sentence``; the end of the first sentence for ``between_sentences``.

Every file is 16-bit mono 24 kHz WAV named ``NN-category-place-pausems.wav``, with 0.2 s
of silence before the first phrase and after the last. The build is deterministic (fixed
specs, voices and rates assigned in order) and reused when ``DIR`` already holds a manifest
of the same specs, corpus version and espeak-ng version.

    .venv/bin/python -m bench.corpus --out /tmp/turn-corpus
    .venv/bin/python -m bench.corpus --out /tmp/turn-corpus --only mid_sentence,01
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: bench/ lives at the repo root
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import hashlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import wave  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Collection, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from bench.corpus_specs import (  # noqa: E402
    CATEGORIES,
    DEFAULT_SPECS,
    FAMILIES,
    Category,
    Spec,
)
from bench.utterances import (  # noqa: E402
    MANIFEST,
    SAMPLE_RATE,
    CorpusError,
    Phrase,
    Utterance,
    _read_manifest,
    load_corpus,
)
from bench.voices import (  # noqa: E402
    VOICED_FRACTION,
    WINDOW_S,
    Voices,
    espeak_version,
    find_espeak,
    piper_version,
    trim_part,
)

CORPUS_VERSION = 2
"""Bump when the way files are made changes: a manifest of another version is rebuilt."""

LEAD_S = 0.2
TAIL_S = 0.2
SPLITS = ("tune", "heldout")


def _seconds(samples: int) -> float:
    return round(samples / SAMPLE_RATE, 6)  # 6 decimals: the sample index survives a round trip


def _file_name(number: int, spec: Spec) -> str:
    pauses = "_".join(str(round(p * 1000)) for p in spec.pauses) or "0"
    return f"{number:03d}-{spec.family}-{spec.language}-{spec.category}-{spec.place}-{pauses}ms.wav"


def _spoken_phrases(spec: Spec, render: Voices) -> list[tuple[str, np.ndarray]]:
    """Each phrase's text and trimmed audio, as the spec's voice family says it."""
    texts = spec.phrases
    if spec.family == "espeak" or spec.category == "between_sentences":
        voiced = []
        for index, text in enumerate(texts):
            spoken = text
            if spec.category == "mid_sentence" and index < len(texts) - 1 and text[-1].isalnum():
                spoken = text + ","  # a continuing intonation, not a sentence-final fall
            if spec.family == "piper":
                voiced.append((text, render.piper_phrase(spoken, wpm=spec.wpm)))
            else:
                voiced.append((text, render.espeak(spoken, voice=spec.voice, wpm=spec.wpm)))
        return voiced
    if spec.family == "piper":
        audio, cuts = render.piper_sentence(texts, wpm=spec.wpm)
    else:
        audio, cuts = render.human(spec)
    parts = np.split(audio, cuts)
    return [(text, trim_part(part)) for text, part in zip(texts, parts, strict=True)]


def _render(
    number: int, spec: Spec, render: Voices, directory: Path
) -> tuple[Utterance, np.ndarray]:
    parts: list[np.ndarray] = [np.zeros(round(LEAD_S * SAMPLE_RATE), np.int16)]
    phrases: list[Phrase] = []
    at = parts[0].size
    for index, (text, voiced) in enumerate(_spoken_phrases(spec, render)):
        phrases.append(Phrase(text, _seconds(at), _seconds(at + voiced.size)))
        parts.append(voiced)
        at += voiced.size
        gap = round(spec.pauses[index] * SAMPLE_RATE) if index < len(spec.pauses) else 0
        if gap:
            parts.append(np.zeros(gap, np.int16))
            at += gap
    parts.append(np.zeros(round(TAIL_S * SAMPLE_RATE), np.int16))
    file = _file_name(number, spec)
    utterance = Utterance(
        id=file.removesuffix(".wav"),
        file=file,
        category=spec.category,
        place=spec.place,
        voice=spec.voice,
        wpm=spec.wpm,
        phrases=tuple(phrases),
        pauses_s=tuple(round(b.start_s - a.end_s, 6) for a, b in itertools.pairwise(phrases)),
        transcript=" ".join(spec.phrases),
        end_of_turn_s=phrases[-1].end_s,
        may_end_after_s=tuple(p.end_s for p in phrases[:-1])
        if spec.category == "between_sentences"
        else (),
        directory=directory,
        language=spec.language,
        family=spec.family,
        split=spec.split,
    )
    return utterance, np.concatenate(parts)


def _write_wav(path: Path, samples: np.ndarray) -> None:
    tmp = path.with_name(f".partial-{path.name}")
    with wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(samples.astype("<i2").tobytes())
    os.replace(tmp, path)


def select(specs: Sequence[Spec], only: Collection[str] | None) -> list[tuple[int, Spec]]:
    """The specs to build, numbered by their position in ``specs`` (from 1).

    ``only`` holds numbers ("7", "007"), categories, voice families, languages, splits
    (``tune``, ``heldout``) or utterance ids; None means all. A spec is chosen when it
    matches every kind of word given (a number or id alone always chooses it).
    """
    numbered = list(enumerate(specs, start=1))
    if not only:
        return numbered
    wanted = {w.strip() for w in only if w.strip()}

    def matches(n: int, s: Spec) -> bool:
        if {str(n), f"{n:02d}", f"{n:03d}", _file_name(n, s).removesuffix(".wav")} & wanted:
            return True
        facets = [(s.category, CATEGORIES), (s.family, FAMILIES), (s.split, SPLITS)]
        languages = {spec.language for spec in specs}
        facets.append((s.language, tuple(languages)))
        given = [(value, {w for w in wanted if w in kinds}) for value, kinds in facets]
        return any(words for _, words in given) and all(
            value in words for value, words in given if words
        )

    chosen = [(n, s) for n, s in numbered if matches(n, s)]
    if not chosen:
        raise CorpusError(f"--only {','.join(sorted(wanted))} matches no utterance")
    return chosen


def _build_key(chosen: Sequence[tuple[int, Spec]], tools: dict[str, str]) -> dict[str, Any]:
    described = json.dumps(
        {
            "specs": [
                [
                    n,
                    s.category,
                    s.place,
                    s.text,
                    s.pauses,
                    s.voice,
                    s.wpm,
                    s.language,
                    s.family,
                    s.split,
                    s.source,
                ]
                for n, s in chosen
            ],
            "sample_rate": SAMPLE_RATE,
            "lead_s": LEAD_S,
            "tail_s": TAIL_S,
            "window_s": WINDOW_S,
            "voiced_fraction": VOICED_FRACTION,
        },
        sort_keys=True,
    )
    return {
        "corpus_version": CORPUS_VERSION,
        **tools,
        "specs_sha256": hashlib.sha256(described.encode()).hexdigest(),
    }


def _method(tools: dict[str, str]) -> str:
    return (
        f"bench/corpus.py version {CORPUS_VERSION}: espeak-ng {tools['espeak_ng']} renders "
        "each phrase separately (-v VOICE -s WPM, 22050 Hz; a phrase followed by a "
        "mid-sentence pause gets a trailing comma, not in the text: continuing intonation); "
        f"Piper ({tools['piper']}, en_US-joe-medium, length_scale 1.0 or 1.2) renders a "
        "sentence whole and its pauses go at the word boundaries of the model's phoneme "
        "alignment; human recordings (bench/human_speech.py) are cut at word boundaries "
        "(Whisper word times, moved to the quietest 10 ms within 40 ms). Cuts get 5 ms "
        f"raised-cosine fades. Everything is resampled to {SAMPLE_RATE} Hz by "
        "bench.wavio.resample (Kaiser-windowed sinc, no dither: deterministic), each "
        "phrase trimmed to its voiced span (10 ms windows "
        f"whose RMS exceeds {VOICED_FRACTION:.0%} of the phrase's loudest window), phrases "
        "joined with exact digital silence: "
        f"{LEAD_S} s before the first, the stated pauses between, {TAIL_S} s after the last. "
        "Times are sample positions / sample_rate; outside the phrases every sample is 0."
    )


@dataclass(frozen=True)
class Built:
    utterances: list[Utterance]
    reused: bool
    espeak_runs: int
    seconds: float
    runs: dict[str, int] = field(default_factory=dict)
    """Renderings by voice family (espeak-ng runs, Piper sentences, recordings read)."""


def build_corpus(
    out: Path | str,
    specs: Sequence[Spec] = DEFAULT_SPECS,
    *,
    only: Collection[str] | None = None,
    force: bool = False,
) -> Built:
    """Build (or reuse) the corpus of ``specs`` (those ``only`` selects) in ``out``."""
    started = time.perf_counter()
    out = Path(out)
    chosen = select(specs, only)
    families = {s.family for _, s in chosen}
    executable = find_espeak() if "espeak" in families else None
    tools = {
        "espeak_ng": espeak_version(executable) if executable else "not used",
        "piper": piper_version() if "piper" in families else "not used",
    }
    key = _build_key(chosen, tools)

    old: dict[str, Any] | None = None
    if (out / MANIFEST).exists():
        old = _read_manifest(out)
        if not force and old.get("build") == key:
            utterances = load_corpus(out)
            if all(u.path.exists() for u in utterances):
                return Built(utterances, True, 0, time.perf_counter() - started)

    out.mkdir(parents=True, exist_ok=True)
    utterances = []
    with tempfile.TemporaryDirectory(prefix="clara-corpus-") as scratch:
        voices = Voices(executable, Path(scratch))
        for number, spec in chosen:
            utterance, samples = _render(number, spec, voices, out)
            _write_wav(utterance.path, samples)
            utterances.append(utterance)

    if old is not None:  # files of the previous build that this one does not have
        kept = {u.file for u in utterances}
        for entry in old.get("utterances", []):
            name = entry.get("file") if isinstance(entry, dict) else None
            if isinstance(name, str) and name not in kept and "/" not in name:
                (out / name).unlink(missing_ok=True)
    manifest = {
        "method": _method(tools),
        "sample_rate": SAMPLE_RATE,
        "build": key,
        "utterances": [u.to_json() for u in utterances],
    }
    tmp = out / f".partial-{MANIFEST}"
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)
    seconds = time.perf_counter() - started
    return Built(utterances, False, voices.runs["espeak"], seconds, dict(voices.runs))


def summary(utterances: Sequence[Utterance]) -> list[str]:
    """One line per voice family, language and category: count, pauses, places, voices."""
    lines = []
    groups = sorted({(u.family, u.language) for u in utterances})
    for family, language in groups:
        for category in CATEGORIES:
            group = [
                u
                for u in utterances
                if u.category == category and (u.family, u.language) == (family, language)
            ]
            if not group:
                continue
            line = f"{family:<6} {language} {category:<17} {len(group):>3} utterances"
            pauses = Counter(p for u in group for p in u.pauses_s)
            if pauses:
                spread = " ".join(f"{p:g}s×{n}" for p, n in sorted(pauses.items()))
                line += f", {sum(pauses.values())} pauses: {spread}"
            places = Counter(u.place for u in group if u.place != "sentence_end")
            if places:
                line += ", " + " ".join(f"{p}×{n}" for p, n in sorted(places.items()))
            line += f", {len({u.voice for u in group})} voices"
            lines.append(line)
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bench.corpus",
        description="Build the turn-taking corpus (espeak-ng, Piper, human recordings).",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory of the corpus")
    parser.add_argument(
        "--only",
        help="comma-separated numbers, ids, categories, families, languages or splits",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    try:
        built = build_corpus(
            args.out, only=args.only.split(",") if args.only else None, force=args.force
        )
    except CorpusError as exc:
        raise SystemExit(f"bench.corpus: {exc}") from None
    for line in summary(built.utterances):
        print(line)
    runs = ", ".join(f"{n} {family}" for family, n in built.runs.items() if n)
    what = "reused" if built.reused else f"built ({runs} renderings)"
    print(f"{len(built.utterances)} utterances {what} in {built.seconds:.2f} s: {args.out}")


__all__ = [
    "CATEGORIES",
    "DEFAULT_SPECS",
    "SAMPLE_RATE",
    "Built",
    "Category",
    "CorpusError",
    "Phrase",
    "Spec",
    "Utterance",
    "build_corpus",
    "load_corpus",
    "main",
    "summary",
]


if __name__ == "__main__":
    main()
