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
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import wave  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Collection, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, Literal, get_args  # noqa: E402

import numpy as np  # noqa: E402

from bench.wavio import read_wav, to_pcm16  # noqa: E402

CORPUS_VERSION = 1
"""Bump when the way files are made changes: a manifest of another version is rebuilt."""

SAMPLE_RATE = 24000
LEAD_S = 0.2
TAIL_S = 0.2
WINDOW_S = 0.01
VOICED_FRACTION = 0.02
MANIFEST = "manifest.json"
ESPEAK = "espeak-ng"

Category = Literal["complete", "mid_sentence", "between_sentences"]
CATEGORIES: tuple[Category, ...] = get_args(Category)

# voices and rates are handed out in turn (8 and 5 are coprime: 40 different pairs)
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


class CorpusError(RuntimeError):
    """The corpus cannot be built or loaded; the message says why, on one line."""


@dataclass(frozen=True)
class Spec:
    """What to say: ``text`` with ``|`` where each of ``pauses`` (seconds) goes."""

    category: Category
    place: str
    text: str
    pauses: tuple[float, ...] = ()
    voice: str = "en-us"
    wpm: int = 170

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


def _specs(rows: Sequence[tuple[Category, str, str, tuple[float, ...]]]) -> tuple[Spec, ...]:
    return tuple(
        Spec(category, place, text, pauses, VOICES[i % len(VOICES)], RATES[i % len(RATES)])
        for i, (category, place, text, pauses) in enumerate(rows)
    )


_COMPLETE = (
    "What time does the pharmacy close tonight?",
    "Please set a timer for ten minutes.",
    "Can you read me my new messages?",
    "I would like to book a table for two people tonight.",
    "How long does it take to drive to the airport?",
    "Remind me to call the doctor tomorrow morning.",
    "What is the weather going to be like this weekend?",
    "Turn the heating down a little.",
    "Where is the nearest train station?",
    "Play some quiet music in the living room.",
    "Did anyone call while I was out?",
    "Cancel my meeting at three o'clock.",
    "How do I get to the city library from here?",
    "Send a message to Tom saying I am on my way.",
)
_MID_SENTENCE = (  # (place, pauses, text)
    ("article", (0.6,), "I would like to book a | table for two"),
    ("article", (0.7,), "Can you find me a | cheap hotel near the station"),
    ("article", (0.3,), "Please move the | dentist appointment to Friday"),
    ("preposition", (0.7,), "Can you send it to | my office"),
    ("preposition", (0.45,), "Put the meeting notes in | the shared folder"),
    ("preposition", (0.9,), "I left my keys at | my mother's house"),
    ("conjunction", (0.6,), "I need milk and | some bread"),
    ("conjunction", (0.8,), "We could walk to the park or | stay at home"),
    ("conjunction", (0.2,), "I called the bank but | nobody answered"),
    ("before_number", (0.7,), "I need a table for | two people"),
    ("before_number", (0.6,), "Set an alarm for | six thirty tomorrow"),
    ("before_number", (0.45,), "Turn the heating up to | twenty one degrees"),
    ("comma", (0.6,), "Well, | I think so"),
    ("comma", (0.7,), "Actually, | make it three o'clock"),
    ("comma", (0.9,), "If it rains tomorrow, | cancel the picnic"),
    (
        "mid_number",
        (0.45, 0.2),
        "My number is five five five | one two three | four five six seven",
    ),
    ("mid_number", (0.8,), "It came to one hundred and | forty two dollars"),
    ("list", (0.7, 0.3), "Add eggs, | milk, | and coffee to the list"),
)
_BETWEEN_SENTENCES = (  # (pause, text)
    (0.2, "I need a taxi. | It is for the airport."),
    (0.3, "The meeting went well. | Can you send the notes to Anna?"),
    (0.45, "What is the weather like tomorrow? | I want to go hiking."),
    (0.6, "That is perfect. | Please book a taxi as well."),
    (0.7, "I lost my wallet. | What should I do?"),
    (0.8, "Call my sister. | Tell her I am late."),
    (0.9, "The printer is not working. | It keeps showing an error."),
    (0.2, "I finished the report. | Should I send it to the whole team?"),
    (0.3, "Turn off the kitchen lights. | Leave the hallway on."),
    (0.45, "My flight was cancelled. | I need another one tonight."),
    (0.6, "Is the library open on Sunday? | I have books to return."),
    (0.7, "Add eggs to the shopping list. | We are out of coffee too."),
    (0.8, "I am running late. | Start the meeting without me."),
    (0.9, "That sounds good to me. | Let us do it on Friday."),
)

DEFAULT_SPECS: tuple[Spec, ...] = _specs(
    [("complete", "none", text, ()) for text in _COMPLETE]
    + [("mid_sentence", place, text, pauses) for place, pauses, text in _MID_SENTENCE]
    + [("between_sentences", "sentence_end", text, (p,)) for p, text in _BETWEEN_SENTENCES]
)


# -- the corpus as the bench sees it -----------------------------------------------------------


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


# -- building ----------------------------------------------------------------------------------


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


def voiced_span(samples: np.ndarray, sample_rate: int) -> tuple[int, int]:
    """(first, one past last) sample of the voiced windows, the rule the bench uses."""
    size = round(WINDOW_S * sample_rate)
    count = samples.size // size
    if count == 0:
        raise CorpusError("espeak-ng produced less than one window of audio")
    x = samples[: count * size].astype(np.float64).reshape(count, size)
    rms = np.sqrt(np.mean(x**2, axis=1))
    if rms.max() == 0:
        raise CorpusError("espeak-ng produced silence")
    voiced = np.flatnonzero(rms > VOICED_FRACTION * rms.max())
    return int(voiced[0]) * size, (int(voiced[-1]) + 1) * size


class _Renderer:
    """Renders each (text, voice, wpm) once: trimmed int16 samples at ``SAMPLE_RATE``."""

    def __init__(self, executable: str, scratch: Path) -> None:
        self._executable = executable
        self._scratch = scratch
        self._done: dict[tuple[str, str, int], np.ndarray] = {}
        self.runs = 0

    def __call__(self, text: str, *, voice: str, wpm: int) -> np.ndarray:
        key = (text, voice, wpm)
        if key not in self._done:
            path = self._scratch / f"{len(self._done)}.wav"
            # the text goes through stdin so that one starting with "-" is not an option
            argv = [self._executable, "-v", voice, "-s", str(wpm), "-w", str(path), "--stdin"]
            self.runs += 1
            proc = subprocess.run(argv, input=text.encode(), capture_output=True, timeout=60)
            if proc.returncode != 0 or not path.exists():
                error = proc.stderr.decode(errors="replace").strip() or "no audio written"
                raise CorpusError(f"espeak-ng failed for voice {voice!r}: {error}")
            samples = to_pcm16(read_wav(path), SAMPLE_RATE, deterministic=True)
            start, end = voiced_span(samples, SAMPLE_RATE)
            self._done[key] = samples[start:end]
        return self._done[key]


def _seconds(samples: int) -> float:
    return round(samples / SAMPLE_RATE, 6)  # 6 decimals: the sample index survives a round trip


def _file_name(number: int, spec: Spec) -> str:
    pauses = "_".join(str(round(p * 1000)) for p in spec.pauses) or "0"
    return f"{number:02d}-{spec.category}-{spec.place}-{pauses}ms.wav"


def _render(
    number: int, spec: Spec, render: _Renderer, directory: Path
) -> tuple[Utterance, np.ndarray]:
    parts: list[np.ndarray] = [np.zeros(round(LEAD_S * SAMPLE_RATE), np.int16)]
    phrases: list[Phrase] = []
    at = parts[0].size
    texts = spec.phrases
    for index, text in enumerate(texts):
        spoken = text
        if spec.category == "mid_sentence" and index < len(texts) - 1 and text[-1].isalnum():
            spoken = text + ","  # a continuing intonation, not a sentence-final fall
        voiced = render(spoken, voice=spec.voice, wpm=spec.wpm)
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
        transcript=" ".join(texts),
        end_of_turn_s=phrases[-1].end_s,
        may_end_after_s=tuple(p.end_s for p in phrases[:-1])
        if spec.category == "between_sentences"
        else (),
        directory=directory,
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

    ``only`` holds numbers ("7", "07"), categories, or utterance ids; None means all.
    """
    numbered = list(enumerate(specs, start=1))
    if not only:
        return numbered
    wanted = {w.strip() for w in only if w.strip()}
    chosen = [
        (n, s)
        for n, s in numbered
        if str(n) in wanted
        or f"{n:02d}" in wanted
        or s.category in wanted
        or _file_name(n, s).removesuffix(".wav") in wanted
    ]
    if not chosen:
        raise CorpusError(f"--only {','.join(sorted(wanted))} matches no utterance")
    return chosen


def _build_key(chosen: Sequence[tuple[int, Spec]], espeak: str) -> dict[str, Any]:
    described = json.dumps(
        {
            "specs": [
                [n, s.category, s.place, s.text, s.pauses, s.voice, s.wpm] for n, s in chosen
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
        "espeak_ng": espeak,
        "specs_sha256": hashlib.sha256(described.encode()).hexdigest(),
    }


def _method(espeak: str) -> str:
    return (
        f"bench/corpus.py version {CORPUS_VERSION}: each phrase rendered separately by "
        f"espeak-ng {espeak} (-v VOICE -s WPM -w, 22050 Hz), resampled to {SAMPLE_RATE} Hz "
        "by bench.wavio.resample (Kaiser-windowed sinc, 64 taps, no dither: deterministic), "
        "trimmed to its voiced span (10 ms windows "
        f"whose RMS exceeds {VOICED_FRACTION:.0%} of the phrase's loudest window); phrases "
        "followed by a mid-sentence pause rendered with a trailing comma (continuing "
        "intonation; not in the text); phrases joined with exact digital silence: "
        f"{LEAD_S} s before the first, the stated pauses between, {TAIL_S} s after the last. "
        "Times are sample positions / sample_rate; outside the phrases every sample is 0."
    )


@dataclass(frozen=True)
class Built:
    utterances: list[Utterance]
    reused: bool
    espeak_runs: int
    seconds: float


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
    executable = find_espeak()
    version = espeak_version(executable)
    chosen = select(specs, only)
    key = _build_key(chosen, version)

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
        render = _Renderer(executable, Path(scratch))
        for number, spec in chosen:
            utterance, samples = _render(number, spec, render, out)
            _write_wav(utterance.path, samples)
            utterances.append(utterance)
        runs = render.runs

    if old is not None:  # files of the previous build that this one does not have
        kept = {u.file for u in utterances}
        for entry in old.get("utterances", []):
            name = entry.get("file") if isinstance(entry, dict) else None
            if isinstance(name, str) and name not in kept and "/" not in name:
                (out / name).unlink(missing_ok=True)
    manifest = {
        "method": _method(version),
        "sample_rate": SAMPLE_RATE,
        "build": key,
        "utterances": [u.to_json() for u in utterances],
    }
    tmp = out / f".partial-{MANIFEST}"
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)
    return Built(utterances, False, runs, time.perf_counter() - started)


def summary(utterances: Sequence[Utterance]) -> list[str]:
    """One line per category: count, pauses, places, voices and rates."""
    lines = []
    for category in CATEGORIES:
        group = [u for u in utterances if u.category == category]
        if not group:
            continue
        line = f"{category:<17} {len(group):>2} utterances"
        pauses = Counter(p for u in group for p in u.pauses_s)
        if pauses:
            spread = " ".join(f"{p:g}s×{n}" for p, n in sorted(pauses.items()))
            line += f", {sum(pauses.values())} pauses: {spread}"
        places = Counter(u.place for u in group if u.place not in ("none", "sentence_end"))
        if places:
            line += ", places: " + " ".join(f"{p}×{n}" for p, n in sorted(places.items()))
        wpm = [u.wpm for u in group]
        line += f", {len({u.voice for u in group})} voices, {min(wpm)}-{max(wpm)} wpm"
        lines.append(line)
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bench.corpus", description="Build the espeak-ng turn-taking corpus."
    )
    parser.add_argument("--out", type=Path, required=True, help="directory of the corpus")
    parser.add_argument(
        "--only",
        help="comma-separated numbers (7 or 07), categories or ids to build instead of all",
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
    what = "reused" if built.reused else f"built ({built.espeak_runs} espeak-ng runs)"
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
