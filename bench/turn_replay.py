"""The field's figures for each turn detection: false cut-offs at 300 ms, latency at 5 %.

LiveKit's eot-bench scores an end-of-turn detector at every pause of real turns: how long
it makes a finished turn wait (latency) against how often it ends a turn at a pause inside
it (a false cut-off), as one knob moves. This replays that on the turn-taking corpus,
causally and offline, with each detector's own decision rule (the product's code for
`combined` and `transcript`) fed what it would have at each pause:

* the words so far: Whisper's text of each phrase up to the pause (``bench/recognize.py``;
  a VAD at 0.2-0.5 s of silence cuts a segment at each corpus pause);
* the sound: livekit's turn-detector-v1-mini on the 1.2 s of audio ending 0.2 s after the
  voice stopped (what livekit and the `combined` detector give it), with livekit's
  threshold for the language;
* the language.

Each detector then waits a time after the end of the voice: the knob ``b`` (livekit's
``min_delay``) when nothing says the sentence goes on, its longer wait (``max_delay``, at
least ``b``) when its evidence says it goes on: ``vad`` and ``stt`` never say so (silence
only); ``eot`` (v1-mini, livekit's default) when the probability is under livekit's
threshold (then 3 s); ``transcript`` when the English word list says so (1.2 s);
``combined`` when the words or the sound say so (1.5 s). A pause of ``L`` seconds is cut
when the wait is shorter than ``L + 0.1`` (the VAD hears the voice resume about 0.1 s after
it does: measured by bench/turn_latency.py, where a 0.8 s wait cut 2 of 43 pauses of
0.7 s and 0.9 s none).

Figures, for each detector and each voice family and language, over its knobs (``b`` from
0.05 to 3 s in 10 ms steps; for the detectors that use the audio model, also ``t`` from 0
to 4, a factor on the probability under which the sound says "goes on": the Pareto
front, as eot-bench re-ranks models at a budget): **FCR@300ms**, the lowest share of
sentences with a pause cut off among the settings whose median latency on finished turns
is at most 300 ms; **latency@5%**, the lowest median latency on finished turns among the
settings that cut at most 5 % of them; and, as shipped (default ``b``, ``t`` = 1), the
cut-offs at pauses up to 0.7 s and the p50/p90 latency. The knobs of each budget are
chosen on the ``tune`` split (English, espeak-ng and Piper) and applied unchanged to every
group: the held-out sentences, the human recordings and the other languages were not used
to choose them.
Latency here is the wait after the voice stops (what the detector adds); the reply figures
through livekit's pipeline are bench/turn_latency.py's.

    .venv/bin/python -m bench.turn_replay --corpus /tmp/turn-corpus
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: bench/ lives at the repo root
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from bench.recognize import load_recognized  # noqa: E402
from bench.utterances import CorpusError, Utterance, load_corpus  # noqa: E402
from bench.voices import resample16  # noqa: E402
from clara_voice.voice.completeness import is_open  # noqa: E402
from clara_voice.voice.listening import (  # noqa: E402
    AFTER_SPEECH_S,
    MODEL_RATE,
    WINDOW_S,
    goes_on,
    low_probability,
    model_thresholds,
)
from clara_voice.voice.turn_words import words_verdict  # noqa: E402
from clara_voice.voice.turns import TURN_TIMING  # noqa: E402

RESUME_S = 0.1
PATIENCE = 0.7
KNOB = np.round(np.arange(0.05, 3.0001, 0.01), 3)


@dataclass(frozen=True)
class Point:
    """A place where a detector decides: a pause inside a sentence, or the end of a turn."""

    utterance: str
    family: str
    language: str
    split: str
    pause: float | None
    """Seconds of silence before the voice resumes; None at the end of the turn."""
    words: str
    probability: float


def points(
    utterances: Sequence[Utterance], heard: dict[str, dict[str, str]], eot: Any
) -> list[Point]:
    found = []
    for u in utterances:
        if u.category == "between_sentences":
            continue  # answering between two sentences is allowed: no cut-off to count
        x = resample16(u.samples(), u.sample_rate, MODEL_RATE)
        for k, phrase in enumerate(u.phrases):
            end = round((phrase.end_s + AFTER_SPEECH_S) * MODEL_RATE)
            window = np.concatenate(
                [x[: round(phrase.end_s * MODEL_RATE)], np.zeros(end, np.int16)]
            )[:end][-round(WINDOW_S * MODEL_RATE) :]
            last = k == len(u.phrases) - 1
            found.append(
                Point(
                    utterance=u.id,
                    family=u.family,
                    language=u.language,
                    split=u.split,
                    pause=None if last else u.phrases[k + 1].start_s - phrase.end_s,
                    words=" ".join(heard[u.id][f"{i}-{i}"] for i in range(k + 1)),
                    probability=float(eot.predict(window)),
                )
            )
    return found


Rule = Callable[[Point, float, float], float]
"""(point, knob b, knob t) -> seconds the detector waits after the voice stops."""

_THRESHOLDS = model_thresholds()


def _silence(point: Point, b: float, t: float) -> float:
    return b


def _eot(longest: float) -> Rule:
    def rule(point: Point, b: float, t: float) -> float:
        # t scales livekit's threshold for the language (1: livekit's own)
        threshold = _THRESHOLDS.get(point.language)
        unlikely = threshold is not None and point.probability < threshold * t
        return max(b, longest) if unlikely else b

    return rule


def _transcript(point: Point, b: float, t: float) -> float:
    english = point.language == "en"
    return max(b, TURN_TIMING["transcript"].max_delay) if english and is_open(point.words) else b


def _combined(point: Point, b: float, t: float) -> float:
    # t scales the sound's part (1: LOW_FACTOR of livekit's threshold, as shipped)
    verdict = words_verdict(point.words, point.language)
    low = low_probability(point.language, _THRESHOLDS)
    low = None if low is None else low * t
    longest = TURN_TIMING["combined"].max_delay
    return max(b, longest) if goes_on(verdict, point.probability, low) else b


T_GRID = np.round(np.arange(0.0, 4.0001, 0.1), 2)
RULES: dict[str, tuple[Rule, float, Sequence[float]]] = {
    # detector: (rule, its default b, the values of its second knob t; the default is 1)
    "vad": (_silence, TURN_TIMING["vad"].min_delay, (1.0,)),
    "stt": (_silence, TURN_TIMING["stt"].min_delay, (1.0,)),
    "v1-mini (livekit default)": (_eot(2.5), 0.3, T_GRID),
    "eot": (_eot(TURN_TIMING["eot"].max_delay), TURN_TIMING["eot"].min_delay, T_GRID),
    "transcript": (_transcript, TURN_TIMING["transcript"].min_delay, (1.0,)),
    "combined": (_combined, TURN_TIMING["combined"].min_delay, T_GRID),
}


def score(
    rule: Rule, group: Sequence[Point], b: float, t: float = 1.0
) -> tuple[float, float, float, int, int]:
    """(FCR, p50 latency, p90 latency, cut-offs at pauses up to 0.7 s, sentences)."""
    ends = [rule(p, b, t) for p in group if p.pause is None]
    cut: dict[str, bool] = {}
    cut_short: dict[str, bool] = {}
    for p in group:
        if p.pause is None:
            continue
        hit = rule(p, b, t) < p.pause + RESUME_S
        cut[p.utterance] = cut.get(p.utterance, False) or hit
        if p.pause <= PATIENCE + 1e-9:
            cut_short[p.utterance] = cut_short.get(p.utterance, False) or hit
    fcr = sum(cut.values()) / len(cut) if cut else 0.0
    return (
        fcr,
        float(np.percentile(ends, 50)) if ends else float("nan"),
        float(np.percentile(ends, 90)) if ends else float("nan"),
        sum(cut_short.values()),
        len(cut),
    )


def operating_points(
    rule: Rule, knob_t: Sequence[float], group: Sequence[Point]
) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """The knobs (b, t) of the detector's best setting on ``group`` at each budget: the
    lowest false cut-off rate with a median latency of at most 300 ms, and the lowest median
    latency with at most 5 % false cut-offs (eot-bench's two budgets)."""
    curve = [(*score(rule, group, float(b), float(t))[:2], b, t) for b in KNOB for t in knob_t]
    fast = [c for c in curve if c[1] <= 0.3 + 1e-9]
    safe = [c for c in curve if c[0] <= 0.05 + 1e-9]
    at_300 = min(fast, key=lambda c: (c[0], c[1]), default=None)
    at_5 = min(safe, key=lambda c: (c[1], c[0]), default=None)
    return (
        None if at_300 is None else (float(at_300[2]), float(at_300[3])),
        None if at_5 is None else (float(at_5[2]), float(at_5[3])),
    )


def figures(
    rule: Rule,
    default_b: float,
    knobs: tuple[tuple[float, float] | None, tuple[float, float] | None],
    group: Sequence[Point],
) -> dict[str, Any]:
    """The detector on ``group`` at the two budgets' knobs (chosen on the tune split), and as
    shipped (default ``b``, ``t`` = 1)."""
    at_300, at_5 = knobs
    fcr, p50, p90, short, sentences = score(rule, group, default_b)
    return {
        "fcr_at_300ms": None if at_300 is None else round(score(rule, group, *at_300)[0], 3),
        "latency_ms_at_5pct_fcr": None
        if at_5 is None
        else round(score(rule, group, *at_5)[1] * 1000),
        "knobs_300ms": at_300,
        "knobs_5pct": at_5,
        "default_b_s": default_b,
        "default_fcr": round(fcr, 3),
        "default_p50_ms": round(p50 * 1000),
        "default_p90_ms": round(p90 * 1000),
        "cut_at_pauses_up_to_0.7s": short,
        "sentences_with_pauses": sentences,
        # the evidence at a pause does not depend on how long it lasts: the same pauses,
        # had they lasted 1.0, 1.2 or 1.4 s, would be held this often
        "held_if_pauses_lasted": {
            f"{length:.1f}s": round(
                float(np.mean([rule(p, default_b, 1.0) >= length + RESUME_S for p in pauses])), 3
            )
            for length in (1.0, 1.2, 1.4)
        }
        if (pauses := [p for p in group if p.pause is not None])
        else {},
        "finished_turns": sum(p.pause is None for p in group),
    }


def groups(found: Sequence[Point]) -> dict[str, list[Point]]:
    keys: dict[str, list[Point]] = {"all": list(found)}
    for p in found:
        for key in (f"{p.family}/{p.language}", f"split:{p.split}"):
            keys.setdefault(key, []).append(p)
    return keys


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| detector | voices | FCR@300ms | latency@5% FCR | at its default: p50 / p90 "
        "| cut at ≤ 0.7 s |",
        "|---|---|---|---|---|---|",
    ]
    for detector, by_group in results.items():
        for key, f in by_group.items():
            fcr = "—" if f["fcr_at_300ms"] is None else f"{f['fcr_at_300ms']:.0%}"
            at5 = (
                "—" if f["latency_ms_at_5pct_fcr"] is None else f"{f['latency_ms_at_5pct_fcr']} ms"
            )
            lines.append(
                f"| {detector} | {key} | {fcr} | {at5} | {f['default_p50_ms']} / "
                f"{f['default_p90_ms']} ms | {f['cut_at_pauses_up_to_0.7s']} of "
                f"{f['sentences_with_pauses']} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.turn_replay", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, required=True)
    args = parser.parse_args(argv)
    from livekit.local_inference import EOT

    try:
        utterances = load_corpus(args.corpus)
        heard = load_recognized(args.corpus)
    except CorpusError as exc:
        raise SystemExit(f"bench.turn_replay: {exc}") from None
    found = points(utterances, heard, EOT())
    print(json.dumps({"method": __doc__.split("\n\n")[1].replace("\n", " ")}))
    results: dict[str, dict[str, dict[str, Any]]] = {}
    tune = [p for p in found if p.split == "tune"]
    for detector, (rule, default_b, knob_t) in RULES.items():
        knobs = operating_points(rule, knob_t, tune)
        results[detector] = {
            k: figures(rule, default_b, knobs, g) for k, g in groups(found).items()
        }
        print(json.dumps({"detector": detector, "figures": results[detector]}), flush=True)
    print(table(results), file=sys.stderr)


__all__ = ["RULES", "Point", "figures", "points", "score"]


if __name__ == "__main__":
    main()
