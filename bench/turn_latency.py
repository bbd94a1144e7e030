"""Turn-taking: how fast a finished turn is answered, and whether a paused one is cut off.

Everything runs in this process on one event loop. For every utterance of the corpus
(``bench/corpus.py``: complete sentences, sentences with pauses where they cannot end,
two sentences with a pause between them), or a WAV file given with ``--audio``, and every
configuration (``bench/turn_setup.py``), a fresh AgentSession hears the speech from a
real-time microphone and speaks into a capturing speaker, both bound to livekit's I/O
seams, with fake providers (instant, or with hosted providers' latencies:
``--realistic``). Per run:

* end of speech: the loop time at which the microphone released the frame holding the
  last voiced sample of the utterance;
* reply latency: the first agent audio frame after it, minus it;
* cut off: ``early``, a user turn was committed or agent audio started before the
  earliest point at which the turn may end (the end of the utterance; for two sentences,
  the end of the first); ``partial``, the first user turn, committed after that point,
  lacked words of the utterance (they became a turn of their own);
* answered at the pause (two sentences only): the turn ended between the sentences, which
  is allowed, only early;
* no reply: no agent audio within the longest endpointing delay plus 3 s.

Output: a JSON line ``{"method": ...}``, then one per configuration with, per category,
p50/p90 reply latency over clean runs, cut-offs (early, partial) and no-replies, and the
outcome of every run; a table for people on stderr.

    .venv/bin/python -m bench.corpus --out /tmp/turn-corpus
    .venv/bin/python -m bench.turn_latency --corpus /tmp/turn-corpus --sweep
    .venv/bin/python -m bench.turn_latency --corpus /tmp/turn-corpus --realistic
    .venv/bin/python -m bench.turn_latency --audio me.wav --transcript "book a table for two"
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: bench/ and testkit/ live at the repo root
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from importlib import metadata  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from livekit.agents import llm  # noqa: E402
from livekit.agents.voice.events import ConversationItemAddedEvent  # noqa: E402

from bench.corpus import CorpusError, load_corpus  # noqa: E402
from bench.recognize import load_recognized  # noqa: E402
from bench.speech import (  # noqa: E402
    Heard,
    MarkedMic,
    Recognized,
    Speech,
    corpus_speech,
    file_speech,
)
from bench.turn_setup import (  # noqa: E402
    DETECTORS,
    SWEEP,
    BenchMedia,
    Config,
    Latencies,
    STTKind,
    describe_session,
    start,
)
from bench.wavio import WavError  # noqa: E402
from clara_voice.config import Settings, SettingsError, load_settings  # noqa: E402

WARMUP_FRAMES = 25  # 0.5 s of microphone silence before the utterance starts
EXTRA_WAIT = 3.0  # waited for a reply beyond the utterance and the longest endpointing delay
SETTLE_TIMEOUT = 3.0  # for the tasks a closed session leaves behind
PATIENCE = 0.7  # the longest mid-sentence pause a configuration must never cut


@dataclass
class Outcome:
    speech: str
    category: str
    longest_pause: float
    family: str = "file"
    language: str = "en"
    place: str = ""
    split: str = ""
    latency: float | None = None
    """First agent audio after the end of speech − the end of speech (clean runs)."""
    cut_off: str | None = None
    at_pause: bool = False
    """Two sentences: the turn ended between them (allowed)."""
    first_event: float | None = None
    """The first user turn or agent audio, relative to the end of speech (negative: before)."""
    user_turns: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "speech": self.speech,
            "family": self.family,
            "language": self.language,
            "split": self.split,
            "latency_ms": _ms(self.latency),
            "cut_off": self.cut_off,
            "at_pause": self.at_pause,
            "first_event_ms": _ms(self.first_event),
            "user_turns": self.user_turns,
        }


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


async def run_once(
    config: Config,
    speech: Speech,
    *,
    latencies: Latencies,
    run: int,
    endpoint_silence: float,
    words: str,
    recognized: dict[str, dict[str, str]],
    live_stt: Any = None,
) -> tuple[Outcome, dict[str, Any]]:
    loop = asyncio.get_running_loop()
    mic = MarkedMic(speech)
    media = BenchMedia(mic)
    turns: list[tuple[float, str]] = []

    def on_item(event: ConversationItemAddedEvent) -> None:
        item = event.item
        if isinstance(item, llm.ChatMessage) and item.role == "user":
            turns.append((loop.time(), item.text_content or ""))

    source: Any = Heard(mic)
    if words == "recognized":
        source = Recognized(mic, recognized[speech.name])
    started = await start(
        config,
        media,
        source,
        latencies=latencies,
        run=run,
        endpoint_silence=endpoint_silence,
        language=speech.language,
        live_stt=live_stt,
    )
    started.agent_session.on("conversation_item_added", on_item)
    audio: list[float] = []
    try:
        settings = describe_session(started)
        await mic.wait_frames_sent(WARMUP_FRAMES, timeout=10)
        mic.say(speech.frames)
        deadline = loop.time() + speech.duration + config.max_delay + EXTRA_WAIT
        while (remaining := deadline - loop.time()) > 0:
            try:
                segment = await media.speaker.next_segment(timeout=remaining)
            except TimeoutError:
                break
            audio.append(segment.first_frame_at)
            if mic.eos_at is not None and segment.first_frame_at >= mic.eos_at:
                break  # the reply to the whole utterance has started
    finally:
        await started.aclose()
        started.agent_session.off("conversation_item_added", on_item)
        mic.close()
    outcome = classify(speech, mic, turns, audio, exact_words=words == "script")
    outcome.family, outcome.language = speech.family, speech.language
    outcome.place, outcome.split = speech.place, speech.split
    return outcome, settings


async def _settle(before: set[asyncio.Task[Any]]) -> None:
    """Nothing of a run may run on into the next one."""
    current = asyncio.current_task()
    left = {t for t in asyncio.all_tasks() if t is not current and not t.done()} - before
    if left:
        await asyncio.wait(left, timeout=SETTLE_TIMEOUT)
        for task in left:
            task.cancel()


def classify(
    speech: Speech,
    mic: MarkedMic,
    turns: list[tuple[float, str]],
    audio: list[float],
    *,
    exact_words: bool = True,
) -> Outcome:
    eos = mic.eos_at
    if eos is None:
        raise RuntimeError("the end of speech was never released by the microphone")
    pauses = [b - a for (_, a), (b, _) in zip(speech.phrases, speech.phrases[1:], strict=False)]
    outcome = Outcome(speech.name, speech.category, max(pauses, default=0.0))
    outcome.user_turns = [text for _, text in turns]
    allowed = sorted(t for t in (*(mic.at(s) for s in speech.may_end_after), eos) if t is not None)
    events = sorted([t for t, _ in turns] + audio)
    if events:
        outcome.first_event = events[0] - eos
        if events[0] < allowed[0] - 0.001:  # a frame's release is the sample's time ±20 ms
            outcome.cut_off = "early"
        elif events[0] < eos - 0.001:
            outcome.at_pause = True
    if outcome.cut_off is None and not outcome.at_pause:
        after = [text for t, text in turns if t >= eos - 0.001]
        # a real recognizer's words differ from the corpus text: only an early turn counts
        if exact_words and after and _words(after[0]) != _words(speech.transcript):
            outcome.cut_off = "partial"
    replies = [t for t in audio if t >= eos]
    if outcome.cut_off is None and not outcome.at_pause and replies:
        outcome.latency = replies[0] - eos
    return outcome


def _percentile(values: Sequence[float], q: float) -> float | None:
    return _ms(float(np.percentile(values, q))) if values else None


def category_stats(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    clean = [o.latency for o in outcomes if o.latency is not None]
    cut = [o for o in outcomes if o.cut_off]
    return {
        "runs": len(outcomes),
        "p50_ms": _percentile(clean, 50),
        "p90_ms": _percentile(clean, 90),
        "clean": len(clean),
        "cut_off": len(cut),
        "cut_off_early": sum(o.cut_off == "early" for o in cut),
        "cut_off_partial": sum(o.cut_off == "partial" for o in cut),
        "cut_off_at_pauses_up_to_0.7s": sum(o.longest_pause <= PATIENCE + 1e-9 for o in cut),
        "answered_at_pause": sum(o.at_pause for o in outcomes),
        "no_reply": sum(o.latency is None and not o.cut_off and not o.at_pause for o in outcomes),
    }


async def run_config(
    config: Config, speeches: Sequence[Speech], args: argparse.Namespace, say: Any
) -> dict[str, Any]:
    latencies = Latencies(realistic=args.realistic, seed=args.seed)
    outcomes: list[Outcome] = []
    settings: dict[str, Any] = {}
    jobs = [
        (run, number, speech) for run in range(args.runs) for number, speech in enumerate(speeches)
    ]
    for first in range(0, len(jobs), args.parallel):
        group = jobs[first : first + args.parallel]
        before = {t for t in asyncio.all_tasks() if not t.done()}
        results = await asyncio.gather(
            *(
                run_once(
                    config,
                    speech,
                    latencies=latencies,
                    run=run * len(speeches) + number,
                    endpoint_silence=args.endpoint_silence,
                    words=args.words,
                    recognized=args.recognized,
                    live_stt=args.live_stt,
                )
                for run, number, speech in group
            )
        )
        await _settle(before)
        for outcome, described in results:
            settings = described
            outcomes.append(outcome)
            what = (
                f"CUT ({outcome.cut_off}) {outcome.user_turns}"
                if outcome.cut_off
                else "at the pause"
                if outcome.at_pause
                else f"{outcome.latency * 1000:6.0f} ms"
                if outcome.latency is not None
                else "no reply"
            )
            say(f"  {config.name} {outcome.speech:<48} {what}")
    groups = sorted({(o.family, o.language, o.category) for o in outcomes})
    return {
        "config": config.name,
        "overrides": config.overrides,
        "stt": config.stt,
        "words": args.words,
        "realistic_providers": args.realistic,
        "by_category": {
            c: category_stats([o for o in outcomes if o.category == c])
            for c in sorted({o.category for o in outcomes})
        },
        "by_group": {
            f"{f}/{lang}/{c}": category_stats(
                [o for o in outcomes if (o.family, o.language, o.category) == (f, lang, c)]
            )
            for f, lang, c in groups
        },
        "settings": settings,
        "runs": [o.to_json() for o in outcomes],
    }


# -- command line -------------------------------------------------------------------------------


def parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key or key not in Settings.model_fields:
            raise SystemExit(f"--set wants SETTING=VALUE with a Settings field, got {pair!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value.strip()
    return overrides


def build_configs(args: argparse.Namespace) -> list[Config]:
    default_stt: STTKind = args.stt
    configs = []
    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    for name in detectors:
        if name == "livekit":
            configs.append(Config("livekit-defaults", "livekit", stt=default_stt))
        elif name == "default":
            configs.append(Config("clara-default", "clara", stt=default_stt))
        elif name in DETECTORS:
            overrides, stt_kind = DETECTORS[name]
            configs.append(Config(name, "clara", dict(overrides), stt_kind))
        else:
            raise SystemExit(
                f"--detectors: unknown {name!r} (livekit, default, {', '.join(DETECTORS)})"
            )
    variants: list[tuple[dict[str, Any], STTKind]] = []
    if args.set:
        variants.append((parse_sets(args.set), default_stt))
    if args.sweep:
        variants.extend(SWEEP)
    for overrides, stt_kind in variants:
        try:
            load_settings(**overrides)
        except SettingsError as exc:
            raise SystemExit(str(exc)) from None
        parts = [f"{k}={v}" for k, v in overrides.items()]
        if stt_kind != default_stt:
            parts.append(f"stt={stt_kind}")
        configs.append(Config("clara[" + ",".join(parts) + "]", "clara", overrides, stt_kind))
    if args.only:
        configs = [c for c in configs if any(word in c.name for word in args.only.split(","))]
    return configs


def load_speeches(args: argparse.Namespace) -> list[Speech]:
    try:
        if args.audio:
            return [file_speech(args.audio, args.transcript or "")]
        utterances = load_corpus(args.corpus)
        args.recognized = load_recognized(args.corpus) if args.words == "recognized" else {}
    except (OSError, ValueError, WavError, CorpusError) as exc:
        raise SystemExit(f"cannot use the speech: {exc}") from None
    if args.utterances:
        wanted = args.utterances.split(",")
        utterances = [u for u in utterances if any(w in u.id for w in wanted)]
    for facet in ("family", "language", "split"):
        if chosen := getattr(args, facet):
            utterances = [u for u in utterances if getattr(u, facet) in chosen.split(",")]
    return [corpus_speech(u) for u in utterances]


def method(args: argparse.Namespace, speeches: Sequence[Speech]) -> dict[str, Any]:
    return {
        "method": {
            "measures": "end of user speech -> first agent audio frame, in process; cut-offs "
            "and no-replies per category (see the module docstring)",
            "speech": str(args.audio or args.corpus),
            "utterances": len(speeches),
            "runs_per_utterance": args.runs,
            "providers": "bench/_fakes.py on livekit's base classes; "
            + (
                "hosted latencies (STT final 150-300 ms, LLM first token 300-600 ms, "
                f"TTS first byte 100-200 ms), seed {args.seed}"
                if args.realistic
                else "instant"
            ),
            "vad": "livekit inference.VAD (silero, local)",
            "stats": "p50/p90 by linear interpolation over clean runs (numpy.percentile)",
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "livekit_agents": metadata.version("livekit-agents"),
            },
        }
    }


def table(records: Sequence[dict[str, Any]]) -> str:
    """For people: complete turns' latency, cut-offs of paused ones, per configuration."""
    width = max(len(r["config"]) for r in records)
    lines = [
        f"{'config':<{width}}  complete p50/p90 ms   mid-sentence cut   between: at pause/cut"
        "   no reply"
    ]
    for r in records:
        cats = r["by_category"]
        done = cats.get("complete") or cats.get("file") or {}
        mid = cats.get("mid_sentence", {})
        between = cats.get("between_sentences", {})
        lines.append(
            f"{r['config']:<{width}}  {done.get('p50_ms')!s:>8} / {done.get('p90_ms')!s:<8}  "
            f"{mid.get('cut_off', '-')!s:>4} of {mid.get('runs', '-')!s:<4}         "
            f"{between.get('answered_at_pause', '-')!s:>3} / {between.get('cut_off', '-')!s:<3}"
            f"          {sum(c.get('no_reply', 0) for c in cats.values())}"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    speeches = load_speeches(args)
    configs = build_configs(args)

    def say(text: str) -> None:
        if not args.json_only:
            print(text, file=sys.stderr, flush=True)

    logging.getLogger().setLevel(logging.ERROR)  # livekit's warnings would drown the table
    print(json.dumps(method(args, speeches)), flush=True)
    records = []
    for config in configs:
        say(f"{config.name}:")
        record = await run_config(config, speeches, args, say)
        records.append(record)
        print(json.dumps(record), flush=True)
    say("\n" + table(records))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.turn_latency", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", type=Path, help="a corpus built by bench.corpus")
    source.add_argument("--audio", type=Path, help="any PCM WAV instead (with --transcript)")
    parser.add_argument("--transcript", help="what the fake STT hears in --audio")
    parser.add_argument("--utterances", help="only corpus utterances whose id has one of these")
    parser.add_argument("--family", help="only these voice families (espeak,piper,human)")
    parser.add_argument("--language", help="only these languages (en,de,es,fr)")
    parser.add_argument("--split", help="only tune or heldout utterances")
    parser.add_argument(
        "--detectors",
        default="livekit,combined,vad,stt,eot,transcript",
        help="configurations: livekit (bare AgentSession), default (clara's defaults) and "
        "clara's turn detections with their own timing: " + ",".join(DETECTORS),
    )
    parser.add_argument(
        "--words",
        choices=("recognized", "script", "whisper"),
        default="recognized",
        help="what the STT hears: Whisper's text of the audio (bench/recognize.py, default), "
        "the corpus text, or Whisper run live on each segment (real decoding time)",
    )
    parser.add_argument("--parallel", type=int, default=1, help="utterances played at once")
    parser.add_argument("--runs", type=int, default=1, help="runs of each utterance")
    parser.add_argument("--set", action="append", metavar="SETTING=VALUE")
    parser.add_argument("--sweep", action="store_true", help="also run the candidate defaults")
    parser.add_argument("--only", help="only configurations whose name has one of these")
    parser.add_argument("--stt", choices=("batch", "streaming"), default="batch")
    parser.add_argument(
        "--endpoint-silence",
        type=float,
        default=0.025,
        help="the streaming STT's endpointing silence (livekit's Deepgram plugin: 25 ms)",
    )
    parser.add_argument("--realistic", action="store_true", help="providers that take time")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args(argv)
    if args.audio and not args.transcript:
        parser.error("--audio needs --transcript")
    if args.runs < 1 or args.parallel < 1:
        parser.error("--runs and --parallel must be at least 1")
    if args.audio:
        args.words = "script"
    args.recognized = {}
    args.live_stt = None
    if args.words == "whisper":
        from bench._whisper_stt import WhisperSTT
        from testkit.speech_models import Whisper

        models: dict[str, Whisper] = {}

        def live_stt(language: str = "en") -> WhisperSTT:
            name = "tiny.en" if language == "en" else "base"
            if name not in models:
                models[name] = Whisper(name, threads=1)
            return WhisperSTT(models[name], language=language)

        args.live_stt = live_stt
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
