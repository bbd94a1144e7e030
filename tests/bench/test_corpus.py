"""bench/corpus.py: the turn-taking corpus says the truth about its audio, to the sample.

A few utterances (one of each kind, two with two pauses, one of the Piper voice, one in
German) are built with the real espeak-ng and Piper; the default specs are checked for
coverage without rendering them all. The human recordings come from the registry
(``bench/human_speech.py``), so only their cutting is tested here, on a made-up recording.
"""

from __future__ import annotations

import json
import re
import wave
from pathlib import Path

import numpy as np
import pytest
from bench.corpus import (
    CATEGORIES,
    DEFAULT_SPECS,
    Built,
    CorpusError,
    Spec,
    Utterance,
    build_corpus,
    load_corpus,
)

from bench import corpus, voices

# 001 complete, 031 mid_sentence/article 0.6 s, 046 mid_number 0.45 + 0.2 s,
# 048 list 0.7 + 0.3 s, 080 between_sentences 0.6 s, 121 the same article sentence by
# Piper, 173 German, after an article, 0.5 s
SUBSET = ("001", "031", "046", "048", "080", "121", "173")
RATE = 24000
WINDOW = 240  # 10 ms


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_corpus(tmp_path_factory.mktemp("corpus"), only=SUBSET)


def window_rms(samples: np.ndarray, start: int, end: int) -> float:
    x = samples[start:end].astype(np.float64)
    return float(np.sqrt(np.mean(x**2))) if x.size else 0.0


def at(seconds: float) -> int:
    index = seconds * RATE
    assert abs(index - round(index)) < 1e-3, f"{seconds} s is not on a sample"
    return round(index)


def test_subset_was_built(built: Built) -> None:
    assert not built.reused
    assert [u.id[:3] for u in built.utterances] == list(SUBSET)
    assert {u.family for u in built.utterances} == {"espeak", "piper"}
    assert {u.language for u in built.utterances} == {"en", "de"}
    assert {u.category for u in built.utterances} == set(CATEGORIES)


def test_files_are_mono_16_bit_24_khz(built: Built) -> None:
    for utterance in built.utterances:
        with wave.open(str(utterance.path), "rb") as wav:
            assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, RATE)
            assert wav.getnframes() == utterance.samples().size


def test_phrases_are_voiced_and_everything_else_is_silent(built: Built) -> None:
    for u in built.utterances:
        samples = u.samples()
        voiced = np.zeros(samples.size, dtype=bool)
        for phrase in u.phrases:
            start, end = at(phrase.start_s), at(phrase.end_s)
            voiced[start:end] = True
            loudest = max(
                window_rms(samples, i, i + WINDOW) for i in range(start, end - WINDOW, WINDOW)
            )
            # the phrase starts and ends on a voiced window (the trimming rule)
            assert window_rms(samples, start, start + WINDOW) > 0.02 * loudest, (u.id, phrase)
            assert window_rms(samples, end - WINDOW, end) > 0.02 * loudest, (u.id, phrase)
        silent = samples[~voiced]
        windows = silent[: silent.size // WINDOW * WINDOW].reshape(-1, WINDOW)
        assert np.all(np.sqrt(np.mean(windows.astype(np.float64) ** 2, axis=1)) == 0), u.id
        assert not np.any(silent), u.id


def silences(samples: np.ndarray, *, window: int = 120, floor: float = 0.01) -> list[float]:
    """Silent runs of 150 ms or more between the first and last voiced 5 ms window."""
    count = samples.size // window
    x = samples[: count * window].astype(np.float64).reshape(count, window)
    rms = np.sqrt(np.mean(x**2, axis=1))
    voiced = np.flatnonzero(rms > floor * rms.max())
    gaps = np.diff(voiced) - 1
    return [g * window / RATE for g in gaps if g * window / RATE >= 0.15]


def test_pauses_have_the_stated_length(built: Built) -> None:
    specs = dict(corpus.select(DEFAULT_SPECS, SUBSET))
    for u in built.utterances:
        stated = specs[int(u.id[:3])].pauses
        assert u.pauses_s == pytest.approx(stated, abs=1e-6)
        between = [b.start_s - a.end_s for a, b in zip(u.phrases, u.phrases[1:], strict=False)]
        assert between == pytest.approx(stated, abs=1e-6)
        measured = silences(u.samples())
        assert measured == pytest.approx(list(stated), abs=0.02), u.id


def test_truth_fields(built: Built) -> None:
    name = re.compile(
        r"^\d{3}-(espeak|piper|human)-[a-z]{2}-(complete|mid_sentence|between_sentences)"
        r"-[a-z_]+-\d+(_\d+)*ms$"
    )
    for u in built.utterances:
        assert name.match(u.id), u.id
        assert u.file == f"{u.id}.wav"
        assert u.end_of_turn_s == u.phrases[-1].end_s
        assert u.transcript == " ".join(p.text for p in u.phrases)
        assert "|" not in u.transcript
        if u.category == "between_sentences":
            assert u.may_end_after_s == (u.phrases[0].end_s,)
        else:
            assert u.may_end_after_s == ()
        assert u.phrases[0].start_s == pytest.approx(corpus.LEAD_S)
        duration = u.samples().size / RATE
        assert duration == pytest.approx(u.end_of_turn_s + corpus.TAIL_S, abs=1e-6)


def test_load_corpus_mirrors_the_manifest(built: Built) -> None:
    directory = built.utterances[0].directory
    loaded = load_corpus(directory)
    assert loaded == built.utterances
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["sample_rate"] == RATE
    assert "espeak-ng 1." in manifest["method"]
    assert [u.to_json() for u in loaded] == manifest["utterances"]
    assert isinstance(loaded[0], Utterance)


def test_rebuild_is_reused_and_a_fresh_build_is_identical(built: Built, tmp_path: Path) -> None:
    directory = built.utterances[0].directory
    again = build_corpus(directory, only=SUBSET)
    assert again.reused
    assert again.espeak_runs == 0
    assert again.utterances == built.utterances

    fresh = build_corpus(tmp_path / "fresh", only=SUBSET)
    assert not fresh.reused
    for name in ["manifest.json", *(u.file for u in built.utterances)]:
        assert (tmp_path / "fresh" / name).read_bytes() == (directory / name).read_bytes(), name


def test_a_different_selection_rebuilds_and_drops_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "c"
    first = build_corpus(out, only=["002"])
    second = build_corpus(out, only=["003"])
    assert not second.reused
    assert not first.utterances[0].path.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", second.utterances[0].file]
    )


def test_custom_specs(tmp_path: Path) -> None:
    specs = [Spec("mid_sentence", "article", "Book me a | taxi", (0.25,), "en-gb", 160)]
    (utterance,) = build_corpus(tmp_path, specs).utterances
    assert utterance.id == "001-espeak-en-mid_sentence-article-250ms"
    assert (utterance.voice, utterance.wpm, utterance.pauses_s) == ("en-gb", 160, (0.25,))


def test_command_line_prints_a_line_per_category(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus.main(["--out", str(tmp_path), "--only", "001,031"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("espeak en complete ")
    assert lines[1].startswith("espeak en mid_sentence ") and "0.6s×1" in lines[1]
    assert lines[2].startswith("2 utterances built")


def test_default_specs_cover_the_cases() -> None:
    english = [s for s in DEFAULT_SPECS if s.language == "en" and s.family == "espeak"]
    by_category = {c: [s for s in english if s.category == c] for c in CATEGORIES}
    assert all(not s.pauses for s in by_category["complete"])
    assert all(len(s.pauses) == 1 for s in by_category["between_sentences"])
    mid = by_category["mid_sentence"]
    assert {p for s in mid for p in s.pauses} >= {0.2, 0.3, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9}
    # pauses after every kind of word, finished sentences ending on every kind of word
    assert {s.place for s in mid} >= {
        "article", "preposition", "conjunction", "comma", "verb", "noun", "pronoun",
        "adverb", "auxiliary", "adjective", "filler",
    }  # fmt: skip
    assert {s.place for s in by_category["complete"]} >= {
        "noun", "verb", "pronoun", "adverb", "adjective", "particle",
        "stranded_preposition", "auxiliary", "number", "question",
    }  # fmt: skip
    # every English sentence (but the pairs) by the Piper voice too, at two rates
    piper = [s for s in DEFAULT_SPECS if s.family == "piper"]
    assert sorted(s.text for s in piper) == sorted(
        s.text for s in english if s.category != "between_sentences"
    )
    assert {s.wpm for s in piper} == {140, 170}
    for language in ("de", "es", "fr"):
        own = [s for s in DEFAULT_SPECS if s.language == language]
        assert {s.category for s in own} == {"complete", "mid_sentence"}
        assert sum(0.5 in s.pauses for s in own) >= 4, language
        assert all(s.split == "heldout" for s in own)
    human = [s for s in DEFAULT_SPECS if s.family == "human"]
    assert {s.category for s in human} == {"complete", "mid_sentence"}
    assert all(s.split == "heldout" and s.source for s in human)
    assert sum(s.split == "heldout" for s in english) >= 20
    assert len({s.voice for s in english}) >= 5
    assert min(s.wpm for s in english) <= 140 and max(s.wpm for s in english) >= 200
    keys = [(s.family, s.text) for s in DEFAULT_SPECS]
    assert len(set(keys)) == len(keys)


def test_a_human_recording_is_cut_at_its_quietest_moment_near_the_word_gap() -> None:
    rate = 16000
    t = np.arange(rate) / rate
    voice = (6000 * np.sin(2 * np.pi * 200 * t)).astype(np.int16)
    voice[7000:7400] //= 50  # a word gap at 0.45 s, 25 ms wide
    assert abs(voices.quietest(voice, 7600, rate=rate) - 7200) <= 80  # asked 25 ms late
    faded = voices._fade(voices.resample16(voice, rate, 24000), [10800])
    assert abs(int(faded[10799])) < 300 and abs(int(faded[10800])) < 300  # no click


def test_missing_espeak_fails_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(voices.shutil, "which", lambda name: None)
    with pytest.raises(CorpusError, match="install it") as caught:
        build_corpus(tmp_path, only=["001"])
    assert "\n" not in str(caught.value)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="matches no utterance"):
        build_corpus(tmp_path, only=["999"])
    with pytest.raises(CorpusError, match=r"no manifest.json in .*bench.corpus --out"):
        load_corpus(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="pause"):
        Spec("mid_sentence", "article", "no marker here", (0.5,))
