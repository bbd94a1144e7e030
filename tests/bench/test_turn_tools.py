"""The turn bench's tools: the recognizer's script, the corpus selection, the replay's
scoring (eot-bench's two budgets), on made-up utterances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bench.corpus_specs import DEFAULT_SPECS
from bench.recognize import runs
from bench.speech import MarkedMic, Recognized, Speech
from bench.turn_replay import RULES, Point, operating_points, score
from bench.turn_tables import rows
from bench.utterances import Phrase, Utterance
from livekit import rtc

from bench import corpus


def speech(phrases: list[tuple[float, float]]) -> Speech:
    frames = tuple(rtc.AudioFrame.create(24000, 1, 480) for _ in range(150))
    return Speech("u", "mid_sentence", frames, (), tuple(phrases))


def test_the_recognizer_answers_for_the_phrases_released_since_its_last_call() -> None:
    mic = MarkedMic(speech([(0.2, 1.0), (1.6, 2.0), (2.2, 2.8)]))
    texts = {"0-0": "I need a table for...", "1-2": "two people tonight.", "1-1": "two"}
    recognized = Recognized(mic, texts)
    assert recognized() == ""  # nothing released yet
    mic.heard = 51  # the frame holding 1.0 s has gone out
    assert recognized() == "I need a table for..."
    assert recognized() == ""  # once
    mic.heard = 150  # a VAD segment around both later phrases: one run
    assert recognized() == "two people tonight."


def test_runs_are_every_stretch_of_consecutive_phrases() -> None:
    utterance = Utterance(
        "u", "u.wav", "mid_sentence", "noun", "en-us", 170,
        (Phrase("a", 0.2, 0.5), Phrase("b", 1.0, 1.5), Phrase("c", 2.0, 2.5)),
        (0.5, 0.5), "a b c", 2.5, (), Path("."),
    )  # fmt: skip
    assert runs(utterance) == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]


def test_selection_by_family_language_and_split() -> None:
    chosen = corpus.select(DEFAULT_SPECS, ["piper", "mid_sentence", "heldout"])
    assert chosen and all(
        (s.family, s.category, s.split) == ("piper", "mid_sentence", "heldout") for _, s in chosen
    )
    german = corpus.select(DEFAULT_SPECS, ["de"])
    assert {s.language for _, s in german} == {"de"}
    assert corpus.select(DEFAULT_SPECS, ["007"]) == [(7, DEFAULT_SPECS[6])]


def point(utterance: str, pause: float | None, words: str, p: float = 0.3) -> Point:
    return Point(utterance, "espeak", "en", "tune", pause, words, p)


POINTS = [
    point("a", 0.7, "The meeting with the client"),  # the words cannot tell
    point("a", None, "The meeting with the client went well."),
    point("b", 0.6, "I need a table for"),  # the words can
    point("b", None, "I need a table for two."),
    point("c", None, "What time is it?"),
]


def test_a_silence_only_detector_cuts_every_pause_shorter_than_its_wait() -> None:
    rule = RULES["vad"][0]
    fcr, p50, _, short, sentences = score(rule, POINTS, 0.5)
    assert (fcr, p50, short, sentences) == (1.0, 0.5, 2, 2)
    assert score(rule, POINTS, 0.9)[0] == 0.0  # 0.7 s + the VAD's 0.1 s to hear the voice again


def test_combined_waits_longer_only_where_the_words_or_the_sound_say_so() -> None:
    rule = RULES["combined"][0]
    fcr, p50, _, short, _ = score(rule, POINTS, 0.3)
    assert fcr == 0.5 and p50 == 0.3 and short == 1  # only the noun phrase is cut
    ran_on = [point("a", 0.7, "The meeting with the client", p=0.05), *POINTS[1:]]
    assert score(rule, ran_on, 0.3)[0] == 0.0  # a voice that ran on is waited for


def test_operating_points_are_the_detectors_best_at_each_budget() -> None:
    at_300, at_5 = operating_points(RULES["combined"][0], (1.0,), POINTS)
    assert at_300 is not None and at_300[0] <= 0.3
    assert at_5 is not None and at_5[0] == pytest.approx(0.8)  # 0.7 s + 0.1 s
    assert np.isclose(score(RULES["combined"][0], POINTS, *at_5)[0], 0.0)


def test_tables_per_voice_family_and_language() -> None:
    record = {
        "config": "combined",
        "runs": [
            {"speech": "001-espeak-en-complete-noun-0ms", "family": "espeak", "language": "en",
             "latency_ms": 950.0, "cut_off": None},
            {"speech": "031-espeak-en-mid_sentence-noun-600ms", "family": "espeak",
             "language": "en", "latency_ms": 1000.0, "cut_off": None},
            {"speech": "173-espeak-de-mid_sentence-noun-900ms", "family": "espeak",
             "language": "de", "latency_ms": None, "cut_off": "early"},
        ],
    }  # fmt: skip
    assert rows(record) == [
        ("espeak de", "—", "—", "1 of 1"),
        ("espeak en", "950 / 950", "0 of 1", "0 of 1"),
        ("all", "950 / 950", "0 of 1", "1 of 2"),
    ]
