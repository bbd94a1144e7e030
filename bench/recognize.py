"""Real recognition of the turn-taking corpus: what a Whisper model hears of each stretch.

A batch STT in livekit's pipeline (an OpenAI-compatible Whisper server, say) is called once
per speech segment the VAD finds, with that segment's audio. In the corpus a segment is a
run of consecutive phrases (a pause shorter than the VAD's silence joins two), so this
module transcribes every run ``i..j`` of every utterance: the audio from 0.1 s before
phrase ``i`` starts to 0.1 s after phrase ``j`` ends, through faster-whisper
(``testkit.speech_models``: ``tiny.en`` for English, the multilingual ``base`` for the
other languages; greedy decoding, no VAD filter). The bench's recognizer
(``bench/_whisper_stt.py``) then answers each segment with the text Whisper gave for the
phrases it holds: real recognition errors and punctuation, at the latency the bench sets.

The result is ``recognized.json`` in the corpus directory, tied to the corpus build (a
rebuilt corpus is transcribed again)::

    .venv/bin/python -m bench.recognize --corpus /tmp/turn-corpus
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: bench/ lives at the repo root
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

from bench.utterances import (  # noqa: E402
    CorpusError,
    Utterance,
    _read_manifest,
    load_corpus,
)
from testkit.speech_models import SpeechModelError, Whisper, WhisperName  # noqa: E402

RECOGNIZED = "recognized.json"
MARGIN_S = 0.1


def model_for(language: str) -> WhisperName:
    return "tiny.en" if language == "en" else "base"


def runs(utterance: Utterance) -> list[tuple[int, int]]:
    n = len(utterance.phrases)
    return [(i, j) for i in range(n) for j in range(i, n)]


def transcribe(utterance: Utterance, whisper: Whisper) -> dict[str, str]:
    samples = utterance.samples()
    rate = utterance.sample_rate
    heard = {}
    for i, j in runs(utterance):
        start = max(0, round((utterance.phrases[i].start_s - MARGIN_S) * rate))
        end = round((utterance.phrases[j].end_s + MARGIN_S) * rate)
        result = whisper.transcribe(samples[start:end], rate, language=utterance.language)
        heard[f"{i}-{j}"] = result.text
    return heard


def load_recognized(directory: Path | str) -> dict[str, dict[str, str]]:
    """``{utterance id: {"i-j": text}}`` of the corpus in ``directory``."""
    directory = Path(directory)
    path = directory / RECOGNIZED
    if not path.exists():
        raise CorpusError(
            f"no {RECOGNIZED} in {directory}: run "
            f"`.venv/bin/python -m bench.recognize --corpus {directory}`"
        )
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if data.get("build") != _read_manifest(directory).get("build"):
        raise CorpusError(f"{path} is of another build of the corpus: run bench.recognize again")
    heard: dict[str, dict[str, str]] = data["utterances"]
    return heard


def recognize_corpus(directory: Path | str, *, threads: int = 1) -> dict[str, Any]:
    directory = Path(directory)
    utterances = load_corpus(directory)
    build = _read_manifest(directory).get("build")
    path = directory / RECOGNIZED
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("build") == build:
            return dict(old)
    models: dict[str, Whisper] = {}
    heard: dict[str, dict[str, str]] = {}
    started = time.perf_counter()
    for utterance in utterances:
        name = model_for(utterance.language)
        if name not in models:
            models[name] = Whisper(name, threads=threads)
        heard[utterance.id] = transcribe(utterance, models[name])
    result = {
        "method": f"faster-whisper, {', '.join(sorted(models))} (int8, greedy, no VAD filter) "
        f"on each run of consecutive phrases, {MARGIN_S} s of margin on both sides",
        "build": build,
        "seconds": round(time.perf_counter() - started, 1),
        "utterances": heard,
    }
    partial = path.with_name(f".partial-{RECOGNIZED}")
    partial.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.recognize", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1, help="CTranslate2 threads")
    args = parser.parse_args(argv)
    try:
        result = recognize_corpus(args.corpus, threads=args.threads)
    except (CorpusError, SpeechModelError) as exc:
        raise SystemExit(f"bench.recognize: {exc}") from None
    utterances = load_corpus(args.corpus)
    wrong = 0
    for u in utterances:
        whole = result["utterances"][u.id][f"0-{len(u.phrases) - 1}"]
        if _words(whole) != _words(u.transcript):
            wrong += 1
    print(
        f"{len(utterances)} utterances, {wrong} not heard word for word "
        f"({result['seconds']} s): {args.corpus / RECOGNIZED}"
    )


def _words(text: str) -> list[str]:
    return "".join(c if c.isalnum() or c == "'" else " " for c in text.lower()).split()


__all__ = ["RECOGNIZED", "load_recognized", "model_for", "recognize_corpus", "runs"]


if __name__ == "__main__":
    main()
