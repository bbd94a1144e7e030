"""Turn latency: end of the user's speech → the agent's first audio frame (issue #3, item 8).

Everything runs in this process on one event loop, with providers that answer at once
(``bench/_fakes.py``: livekit's own STT/LLM/TTS base classes), so the figure is what turn
handling itself costs: VAD silence, endpointing delay, the end-of-turn model, livekit's
scheduling. A real deployment adds the providers' own latencies on top.

For every run a fresh ``AgentSession`` hears real speech (espeak-ng, or ``--audio FILE``)
from a real-time microphone (``testkit.audio.WavAudioInput``) and speaks into a capturing
speaker (``testkit.audio.CaptureAudioOutput``), both bound to livekit's I/O seams as
``testkit.pipeline.SeamMedia`` binds them:

* start: the loop time at which the microphone released the frame holding the last voiced
  sample of the utterance (found from the audio by energy: ``testkit.audio.voiced_span``);
* end: the loop time at which the agent's first audio frame reached the audio output.

The default utterance has a pause inside it (two phrases ``--pause`` seconds apart). A run
is **cut off** when the pause split the utterance: the agent committed a user turn or began
answering before the end of the whole utterance (``early``), or the first user turn,
committed after it, lacked the words after the pause, which became a turn of their own
(``partial``: livekit committed on a transcript that had not caught up yet). Cut-off runs
are counted, described, and left out of the percentiles. Runs are sequential; each session
is closed and every task it left is waited for (and reported) before the next run.

Configurations: ``livekit-defaults`` (a bare ``AgentSession(stt, llm, tts,
vad=inference.VAD())``), ``clara-default`` (clara_voice's ``LiveKitPipelineFactory`` with
default Settings, started through ``factory.start``), one per ``--set`` group, and with
``--sweep`` a few candidates for clara_voice's defaults.

Output: a first JSON line ``{"method": ...}``, then one JSON line per configuration; with
``--json-only`` nothing else (progress and the summary table otherwise go to stderr).

    .venv/bin/python -m bench.turn_latency --runs 5
    .venv/bin/python -m bench.turn_latency --sweep --runs 5
    .venv/bin/python bench/turn_latency.py --set turn_detection=eot --set min_endpointing_delay=0.3
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: tests/ and bench/ live at the repo root
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Awaitable, Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from importlib import metadata  # noqa: E402
from typing import Any, Literal  # noqa: E402

import numpy as np  # noqa: E402
from livekit import rtc  # noqa: E402
from livekit.agents import Agent, AgentSession, inference, llm, stt, utils, vad  # noqa: E402
from livekit.agents.voice.events import ConversationItemAddedEvent  # noqa: E402

from bench._fakes import FakeLLM, FakeStreamingSTT, FakeSTT, FakeTTS  # noqa: E402
from clara_voice.config import Settings, SettingsError, load_settings  # noqa: E402
from clara_voice.logging import get_logger  # noqa: E402
from clara_voice.voice.messages import TurnMetrics  # noqa: E402
from clara_voice.voice.pipeline import LiveKitPipelineFactory  # noqa: E402
from clara_voice.voice.providers import Providers  # noqa: E402
from testkit.audio import (  # noqa: E402
    CaptureAudioOutput,
    WavAudioInput,
    load_frames,
    samples_of,
    speech_wav,
    voiced_span,
)
from testkit.fakes import FakeRoom, make_participant  # noqa: E402
from testkit.pipeline import SeamMedia  # noqa: E402

SAMPLE_RATE = 24000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
LEAD_SILENCE = 0.2  # inside the utterance, after the warm-up below
WARMUP_FRAMES = 25  # 0.5 s of microphone silence before the utterance starts
VOICED_THRESHOLD = 0.02  # voiced_span's default: 10 ms RMS above 2 % of the loudest window
PHRASE_GAP = 0.15  # a silence this long splits an --audio file into phrases
EXTRA_WAIT = 3.0  # waited for a reply beyond the utterance and the max endpointing delay
SETTLE_TIMEOUT = 3.0  # for the tasks a closed session leaves behind

DEFAULT_PHRASES = ("I would like to book a table", "for two people tonight please")
REPLY = "Sure, a table for two tonight."
REPLY_SECONDS = 0.3
IDENTITY = "bench-user"

STTKind = Literal["batch", "streaming"]


# -- audio -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Speech:
    """The utterance as 20 ms frames, with what the fake STT may say and when."""

    frames: tuple[rtc.AudioFrame, ...]
    words: tuple[tuple[int, str], ...]
    """(index of the frame in which the word ends, word), in order."""
    phrases: tuple[tuple[float, float], ...]
    """(start, end) seconds of each voiced phrase within the utterance."""
    source: str

    @property
    def duration(self) -> float:
        return len(self.frames) * FRAME_MS / 1000

    @property
    def eos_offset(self) -> float:
        return self.phrases[-1][1]

    @property
    def eos_frame(self) -> int:
        """The frame holding the last voiced sample."""
        return max(0, math.ceil(self.eos_offset * SAMPLE_RATE) - 1) // FRAME_SAMPLES

    def describe(self) -> dict[str, Any]:
        gaps = [b[0] - a[1] for a, b in zip(self.phrases, self.phrases[1:], strict=False)]
        return {
            "source": self.source,
            "transcript": " ".join(word for _, word in self.words),
            "phrases_s": [[round(a, 3), round(b, 3)] for a, b in self.phrases],
            "pauses_s": [round(g, 3) for g in gaps],
            "speech_s": round(self.eos_offset - self.phrases[0][0], 3),
            "frame_ms": FRAME_MS,
            "sample_rate": SAMPLE_RATE,
            "silence_before_s_about": round(
                (WARMUP_FRAMES + 1) * FRAME_MS / 1000 + self.phrases[0][0], 3
            ),
            "after": "the microphone keeps sending digital silence until the run ends",
        }


def _frames_of(samples: np.ndarray) -> tuple[rtc.AudioFrame, ...]:
    padded = np.concatenate(
        [samples.astype(np.int16), np.zeros(-len(samples) % FRAME_SAMPLES, dtype=np.int16)]
    )
    return tuple(
        rtc.AudioFrame(padded[i : i + FRAME_SAMPLES].tobytes(), SAMPLE_RATE, 1, FRAME_SAMPLES)
        for i in range(0, len(padded), FRAME_SAMPLES)
    )


def _word_ends(
    phrases: Sequence[tuple[float, float]], texts: Sequence[str]
) -> tuple[tuple[int, str], ...]:
    """Each phrase's words spread evenly over it; a word is heard once its frame is."""
    words: list[tuple[int, str]] = []
    for (start, end), text in zip(phrases, texts, strict=True):
        tokens = text.split()
        for k, token in enumerate(tokens):
            at = start + (k + 1) / len(tokens) * (end - start)
            words.append((max(0, math.ceil(at * SAMPLE_RATE) - 1) // FRAME_SAMPLES, token))
    return tuple(words)


def default_speech(pause: float) -> Speech:
    """Two espeak-ng phrases, each trimmed to its voiced span, ``pause`` seconds apart."""
    parts: list[np.ndarray] = []
    for text in DEFAULT_PHRASES:
        frames = load_frames(
            speech_wav(text), sample_rate=SAMPLE_RATE, leading_silence=0, trailing_silence=0
        )
        start, end = voiced_span(frames)
        parts.append(samples_of(frames)[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)])
    lead = round(LEAD_SILENCE * SAMPLE_RATE)
    gap = round(pause * SAMPLE_RATE)
    samples = np.concatenate(
        [np.zeros(lead, np.int16), parts[0], np.zeros(gap, np.int16), parts[1]]
    )
    first_end = lead + len(parts[0])
    phrases = (
        (lead / SAMPLE_RATE, first_end / SAMPLE_RATE),
        ((first_end + gap) / SAMPLE_RATE, len(samples) / SAMPLE_RATE),
    )
    return Speech(
        frames=_frames_of(samples),
        words=_word_ends(phrases, DEFAULT_PHRASES),
        phrases=phrases,
        source=f"espeak-ng en-us: {DEFAULT_PHRASES[0]!r} + {pause} s pause + "
        f"{DEFAULT_PHRASES[1]!r}",
    )


def file_speech(path: Path, transcript: str) -> Speech:
    """A mono 16-bit WAV; its phrases are its voiced stretches (gaps ≥ 0.15 s split them)."""
    frames = load_frames(
        path, sample_rate=SAMPLE_RATE, leading_silence=LEAD_SILENCE, trailing_silence=0
    )
    tokens = transcript.split()
    if not tokens:
        raise SystemExit("--transcript is empty")
    samples = samples_of(frames).astype(np.float64)
    size = SAMPLE_RATE // 100
    count = samples.size // size
    if count == 0:
        raise SystemExit(f"{path}: shorter than 10 ms")
    rms = np.sqrt(np.mean(samples[: count * size].reshape(count, size) ** 2, axis=1))
    if rms.max() == 0:
        raise SystemExit(f"{path}: silent")
    voiced = np.flatnonzero(rms > VOICED_THRESHOLD * rms.max())
    phrases: list[tuple[float, float]] = []
    start = prev = int(voiced[0])
    for window in voiced[1:]:
        if (window - prev - 1) * size / SAMPLE_RATE >= PHRASE_GAP:
            phrases.append((start * size / SAMPLE_RATE, (prev + 1) * size / SAMPLE_RATE))
            start = int(window)
        prev = int(window)
    phrases.append((start * size / SAMPLE_RATE, (prev + 1) * size / SAMPLE_RATE))
    # the transcript's words shared out over the phrases by their voiced duration
    total = sum(b - a for a, b in phrases)
    texts: list[str] = []
    taken = 0
    spoken = 0.0
    for a, b in phrases:
        spoken += b - a
        upto = round(len(tokens) * spoken / total)
        texts.append(" ".join(tokens[taken:upto]) or tokens[min(taken, len(tokens) - 1)])
        taken = upto
    return Speech(
        frames=tuple(frames),
        words=_word_ends(phrases, texts),
        phrases=tuple(phrases),
        source=str(path),
    )


class MarkedMic(WavAudioInput):
    """``WavAudioInput`` that notes the loop time at which each utterance frame is released."""

    def __init__(self, speech: Speech) -> None:
        super().__init__(sample_rate=SAMPLE_RATE, frame_ms=FRAME_MS, label="bench-mic")
        self.speech = speech
        self._position_of = {id(frame): i for i, frame in enumerate(speech.frames)}
        self.heard = 0
        """Utterance frames released so far."""
        self.eos_at: float | None = None
        """When the frame holding the last voiced sample was released."""

    async def __anext__(self) -> rtc.AudioFrame:
        frame = await super().__anext__()
        index = self._position_of.get(id(frame))
        if index is not None:
            self.heard = index + 1
            if index == self.speech.eos_frame:
                self.eos_at = asyncio.get_running_loop().time()
        return frame


class Heard:
    """The fake STT's script: the words whose audio the microphone has released, once each."""

    def __init__(self, mic: MarkedMic) -> None:
        self._mic = mic
        self._next = 0

    def __call__(self) -> str:
        words = self._mic.speech.words
        said: list[str] = []
        while self._next < len(words) and words[self._next][0] < self._mic.heard:
            said.append(words[self._next][1])
            self._next += 1
        return " ".join(said)


class BenchMedia(SeamMedia):
    """``SeamMedia`` with the run's marked microphone instead of a fresh one."""

    def __init__(self, mic: MarkedMic) -> None:
        super().__init__()
        self.mic = mic

    def make_mic(self) -> MarkedMic:
        return self.mic

    @property
    def speaker(self) -> CaptureAudioOutput:
        speaker = self.participants[IDENTITY].speaker
        assert speaker is not None
        return speaker


# -- configurations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    name: str
    kind: Literal["livekit", "clara"]
    overrides: dict[str, Any] = field(default_factory=dict)
    stt: STTKind = "batch"


@dataclass
class Started:
    agent_session: AgentSession[Any]
    vad: vad.VAD
    stt: stt.STT[Any]
    aclose: Callable[[], Awaitable[None]]


def make_stt(kind: STTKind, heard: Heard, endpoint_silence: float) -> stt.STT[Any]:
    if kind == "streaming":
        return FakeStreamingSTT(heard, endpoint_silence=endpoint_silence)
    return FakeSTT(heard)


class _Events:
    """clara_voice's PipelineEvents: what the pipeline reports, kept for the record."""

    def __init__(self) -> None:
        self.turns: list[TurnMetrics] = []
        self.errors: list[str] = []

    def message_added(self, message: Any) -> None:
        pass

    def turn_completed(self, turn: TurnMetrics) -> None:
        self.turns.append(turn)

    def provider_failed(self, source: str, error: object) -> None:
        self.errors.append(f"{source}: {error}")

    def pipeline_closed(self, reason: str, *, error: bool) -> None:
        pass


async def start_livekit_defaults(
    config: Config, media: BenchMedia, heard: Heard, endpoint_silence: float
) -> Started:
    fake_stt = make_stt(config.stt, heard, endpoint_silence)
    fake_llm, fake_tts = FakeLLM(REPLY), FakeTTS(seconds=REPLY_SECONDS)
    the_vad = inference.VAD()
    agent_session: AgentSession[Any] = AgentSession(
        stt=fake_stt, llm=fake_llm, tts=fake_tts, vad=the_vad
    )

    async def aclose() -> None:
        await agent_session.aclose()
        await fake_stt.aclose()
        await fake_llm.aclose()
        await fake_tts.aclose()

    try:
        await media.start(
            agent_session,
            Agent(instructions="You are a helpful voice assistant."),
            room=None,
            participant=make_participant(IDENTITY),
            session_type="voice-vad",
            log=get_logger("clara_voice.bench", participant=IDENTITY),
        )
    except BaseException:
        await aclose()
        raise
    return Started(agent_session, the_vad, fake_stt, aclose)


async def start_clara(
    config: Config, media: BenchMedia, heard: Heard, endpoint_silence: float
) -> Started:
    settings = load_settings(**config.overrides)
    the_vad = inference.VAD(  # as clara_voice.worker.prewarm builds it
        min_silence_duration=settings.vad_min_silence_duration,
        activation_threshold=settings.vad_activation_threshold,
    )
    providers = Providers(
        stt=make_stt(config.stt, heard, endpoint_silence),
        llm=FakeLLM(REPLY),
        tts=FakeTTS(seconds=REPLY_SECONDS),
    )
    factory = LiveKitPipelineFactory(settings, vad=the_vad, providers=providers, media=media)
    room = FakeRoom("bench-room")
    participant = make_participant(IDENTITY)
    room.remote_participants[IDENTITY] = participant
    try:
        pipeline = await factory.start(
            room=room,  # type: ignore[arg-type]
            participant=participant,
            session_type="voice-vad",
            history=(),
            events=_Events(),
            log=get_logger("clara_voice.bench", participant=IDENTITY),
        )
    except BaseException:
        await factory.aclose()
        raise

    async def aclose() -> None:
        await pipeline.aclose()
        await factory.aclose()  # closes the providers

    return Started(pipeline.agent_session, the_vad, providers.stt, aclose)


def describe_session(started: Started) -> dict[str, Any]:
    """The turn handling the AgentSession actually runs with."""
    handling = started.agent_session.options.turn_handling
    detection = handling.get("turn_detection")
    endpointing = handling["endpointing"]
    interruption = handling["interruption"]
    opts = getattr(started.vad, "_opts", None)
    return {
        "turn_detection": detection
        if detection is None or isinstance(detection, str)
        else f"eot:{getattr(detection, 'model', type(detection).__name__)}",
        "min_endpointing_delay": endpointing.get("min_delay"),
        "max_endpointing_delay": endpointing.get("max_delay"),
        "endpointing_mode": endpointing.get("mode"),
        "vad_min_silence_duration": getattr(opts, "min_silence_duration", None),
        "vad_activation_threshold": getattr(opts, "activation_threshold", None),
        "allow_interruptions": interruption.get("enabled"),
        "interruption_mode": interruption.get("mode")
        or (
            "auto (adaptive in dev/hosted mode)"
            if utils.is_dev_mode() or utils.is_hosted()
            else "auto (vad: adaptive is off outside dev/hosted mode)"
        ),
        "min_interruption_duration": interruption.get("min_duration"),
        "preemptive_generation": handling["preemptive_generation"].get("enabled"),
        "stt": f"{started.stt.model} (streaming={started.stt.capabilities.streaming})",
    }


# -- one run ------------------------------------------------------------------------------------


@dataclass
class RunResult:
    latency: float | None = None
    """First agent audio after the end of speech − the end of speech (clean runs)."""
    cut_off: str | None = None
    """Why the utterance was not answered as one turn: ``"early"`` (a user turn committed or
    agent audio before the end of speech) or ``"partial"`` (the first turn, committed after
    it, lacked words of the utterance: the rest became a turn of its own)."""
    first_audio: float | None = None
    """First agent audio of the run relative to the end of speech (negative: before)."""
    first_user_turn: float | None = None
    user_turns: list[str] = field(default_factory=list)
    reply_after_eos: float | None = None
    livekit_e2e: float | None = None
    livekit_eot_delay: float | None = None
    eot: list[dict[str, Any]] = field(default_factory=list)
    """livekit's end-of-turn predictions during the run (``at_ms`` relative to end of speech)."""
    leaked: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def _other_tasks() -> set[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


async def run_once(
    config: Config, speech: Speech, *, endpoint_silence: float, max_delay: float, eot: EotLog
) -> RunResult:
    loop = asyncio.get_running_loop()
    eot.predictions.clear()
    before = _other_tasks()
    mic = MarkedMic(speech)
    heard = Heard(mic)
    media = BenchMedia(mic)
    start = start_livekit_defaults if config.kind == "livekit" else start_clara
    items: list[tuple[float, str, str, dict[str, Any]]] = []

    def on_item(event: ConversationItemAddedEvent) -> None:
        item = event.item
        if isinstance(item, llm.ChatMessage) and item.role in ("user", "assistant"):
            items.append((loop.time(), item.role, item.text_content or "", dict(item.metrics)))

    result = RunResult()
    started = await start(config, media, heard, endpoint_silence)
    started.agent_session.on("conversation_item_added", on_item)
    first_frames: list[float] = []
    try:
        result.settings = describe_session(started)
        speaker = media.speaker
        await mic.wait_frames_sent(WARMUP_FRAMES, timeout=10)
        mic.say(speech.frames)
        deadline = loop.time() + speech.duration + max_delay + EXTRA_WAIT
        while (remaining := deadline - loop.time()) > 0:
            try:
                segment = await speaker.next_segment(timeout=remaining)
            except TimeoutError:
                break
            first_frames.append(segment.first_frame_at)
            if mic.eos_at is not None and segment.first_frame_at >= mic.eos_at:
                break  # the reply to the whole utterance has started
    finally:
        await started.aclose()  # the reply is interrupted; its message still comes through
        started.agent_session.off("conversation_item_added", on_item)
        mic.close()

    # nothing of this run may run on into the next one
    left = _other_tasks() - before
    if left:
        await asyncio.wait(left, timeout=SETTLE_TIMEOUT)
        left = {t for t in left if not t.done()}
        result.leaked = sorted(t.get_name() for t in left)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=SETTLE_TIMEOUT)

    eos = mic.eos_at
    if eos is None:
        raise RuntimeError("the end of speech was never released by the microphone")
    users = [(t, text, m) for t, role, text, m in items if role == "user"]
    replies = [(t, m) for t, role, _, m in items if role == "assistant"]
    result.eot = [{"at_ms": _ms(t - eos), **fields} for t, fields in eot.predictions]
    result.user_turns = [text for _, text, _ in users]
    if users:
        result.first_user_turn = users[0][0] - eos
    if first_frames:
        result.first_audio = first_frames[0] - eos
    after = [t for t in first_frames if t >= eos]
    if after:
        result.reply_after_eos = after[0] - eos
    everything = _words(" ".join(word for _, word in speech.words))
    if any(t < eos for t, _, _ in users) or any(t < eos for t in first_frames):
        result.cut_off = "early"
    elif users and _words(users[0][1]) != everything:
        result.cut_off = "partial"
    if result.cut_off is None and result.reply_after_eos is not None:
        result.latency = result.reply_after_eos
        if replies:
            result.livekit_e2e = replies[0][1].get("e2e_latency")
        if users:
            result.livekit_eot_delay = users[0][2].get("end_of_turn_delay")
    return result


# -- a configuration ----------------------------------------------------------------------------


class WarningLog(logging.Handler):
    """Counts the warnings logged (by livekit, mostly) while a configuration runs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.name}: {record.getMessage()[:200]}"] += 1


class EotLog(logging.Handler):
    """Keeps livekit's "eot prediction" debug records: when, probability, threshold, delay."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.predictions: list[tuple[float, dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() != "eot prediction":
            return
        fields = ("probability", "unlikely_threshold", "endpointing_delay", "trigger")
        self.predictions.append(
            (asyncio.get_running_loop().time(), {k: getattr(record, k, None) for k in fields})
        )


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def _percentile(values: Sequence[float], q: float) -> float | None:
    return _ms(float(np.percentile(values, q))) if values else None


async def run_config(
    config: Config,
    speech: Speech,
    *,
    runs: int,
    endpoint_silence: float,
    warnings: WarningLog,
    eot: EotLog,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    warnings.counts.clear()
    max_delay = 3.0
    if config.kind == "clara":
        max_delay = load_settings(**config.overrides).max_endpointing_delay
    results: list[RunResult] = []
    for index in range(runs):
        result = await run_once(
            config, speech, endpoint_silence=endpoint_silence, max_delay=max_delay, eot=eot
        )
        results.append(result)
        if result.latency is not None:
            what = f"{result.latency * 1000:7.1f} ms"
            if result.eot:
                what += "  eot: " + ", ".join(
                    f"p={e['probability']:.3g} (threshold {e['unlikely_threshold']:.3g}) "
                    f"at {e['at_ms']} ms"
                    for e in result.eot
                    if e["probability"] is not None and e["unlikely_threshold"] is not None
                )
        elif result.cut_off:
            what = (
                f"CUT OFF ({result.cut_off}: first turn {_ms(result.first_user_turn)} ms, "
                f"first audio {_ms(result.first_audio)} ms rel. end of speech; "
                f"turns {result.user_turns})"
            )
        else:
            what = "no reply"
        progress(f"  {config.name} run {index + 1}/{runs}: {what}")

    clean = [r.latency for r in results if r.latency is not None]
    settings = results[0].settings if results else {}
    record: dict[str, Any] = {
        "config": config.name,
        "runs": runs,
        "clean_runs": len(clean),
        "p50_ms": _percentile(clean, 50),
        "p90_ms": _percentile(clean, 90),
        "mean_ms": _ms(float(np.mean(clean))) if clean else None,
        "min_ms": _ms(min(clean)) if clean else None,
        "max_ms": _ms(max(clean)) if clean else None,
        "cut_off": sum(r.cut_off is not None for r in results),
        "no_reply": sum(r.cut_off is None and r.latency is None for r in results),
        "latencies_ms": [_ms(v) for v in clean],
        "cut_off_runs": [
            {
                "kind": r.cut_off,
                "first_user_turn_ms": _ms(r.first_user_turn),
                "first_audio_ms": _ms(r.first_audio),
                "reply_after_end_of_speech_ms": _ms(r.reply_after_eos),
                "user_turns": r.user_turns,
            }
            for r in results
            if r.cut_off is not None
        ],
        "livekit_e2e_latency_p50_ms": _percentile(
            [r.livekit_e2e for r in results if r.livekit_e2e is not None], 50
        ),
        "livekit_end_of_turn_delay_p50_ms": _percentile(
            [r.livekit_eot_delay for r in results if r.livekit_eot_delay is not None], 50
        ),
        "settings": settings,
        "overrides": config.overrides if config.kind == "clara" else None,
        "eot_predictions": [r.eot for r in results] if any(r.eot for r in results) else None,
        "leaked_tasks": sorted({name for r in results for name in r.leaked}),
        "warnings": dict(warnings.counts),
    }
    return record


# -- command line -------------------------------------------------------------------------------


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SystemExit(f"--set wants KEY=VALUE, got {pair!r}")
        if key not in Settings.model_fields:
            raise SystemExit(f"--set {key}: not a Settings field")
        overrides[key] = _value(value.strip())
    return overrides


def clara_name(overrides: dict[str, Any], stt_kind: STTKind, default_stt: STTKind) -> str:
    parts = [f"{k}={v}" for k, v in overrides.items()]
    if stt_kind != default_stt:
        parts.append(f"stt={stt_kind}")
    return "clara[" + ",".join(parts) + "]" if parts else "clara-default"


SWEEP: tuple[tuple[dict[str, Any], STTKind], ...] = (
    ({"vad_min_silence_duration": 0.3, "min_endpointing_delay": 0.4}, "batch"),
    ({"vad_min_silence_duration": 0.8, "min_endpointing_delay": 0.6}, "batch"),
    ({"turn_detection": "eot"}, "batch"),
    (
        {"turn_detection": "eot", "vad_min_silence_duration": 0.3, "min_endpointing_delay": 0.3},
        "batch",
    ),
    ({"turn_detection": "stt"}, "batch"),
    ({"turn_detection": "stt"}, "streaming"),
)


def build_configs(args: argparse.Namespace) -> list[Config]:
    default_stt: STTKind = args.stt
    configs = [
        Config("livekit-defaults", "livekit", stt=default_stt),
        Config("clara-default", "clara", stt=default_stt),
    ]
    variants: list[tuple[dict[str, Any], STTKind]] = []
    if args.set:  # every --set goes into one extra configuration
        variants.append((parse_sets(args.set), default_stt))
    if args.sweep:
        variants.extend(SWEEP)
    seen = {c.name for c in configs}
    for overrides, stt_kind in variants:
        name = clara_name(overrides, stt_kind, default_stt)
        if name in seen:
            continue
        try:
            settings = load_settings(**overrides)
        except SettingsError as exc:
            raise SystemExit(str(exc)) from None
        if settings.default_session_type != "voice-vad":
            raise SystemExit("the bench measures voice-vad sessions only")
        seen.add(name)
        configs.append(Config(name, "clara", overrides, stt_kind))
    return configs


def method(args: argparse.Namespace, speech: Speech) -> dict[str, Any]:
    env = sorted(k for k in os.environ if k.startswith(("CLARA_", "LIVEKIT_")))
    return {
        "method": {
            "measures": "end of user speech -> first agent audio frame, in process",
            "from": "loop time at which the real-time microphone (testkit.audio.WavAudioInput, "
            "20 ms frames released on the loop clock) handed the AgentSession the frame "
            "holding the last voiced sample (10 ms RMS > 2% of the loudest window); that "
            "sample lies up to 20 ms before the release",
            "to": "loop time at which the agent's first audio frame after that reached the "
            "AudioOutput seam (testkit.audio.CaptureAudioOutput.capture_frame)",
            "providers": "zero-latency fakes on livekit's base classes (bench/_fakes.py): "
            "batch STT wrapped by AgentSession in livekit's VAD StreamAdapter, returning the "
            "words whose audio the mic has released (or, where the config says stt=streaming, "
            "a streaming STT shaped like livekit's Deepgram plugin: final transcript then "
            f"END_OF_SPEECH after {args.endpoint_silence} s of silence below -40 dBFS, no "
            "speech_end_time), "
            f"LLM streaming {REPLY!r} at once, TTS returning {REPLY_SECONDS} s of tone at once",
            "vad": "livekit inference.VAD (silero, local)",
            "cut_off": "the pause split the utterance: 'early' = a user turn was committed or "
            "agent audio started before the end of the whole utterance; 'partial' = the first "
            "user turn, committed after it, lacked the words after the pause (they became a "
            "turn of their own). Such runs are excluded from the percentiles and listed under "
            "cut_off_runs",
            "stats": "p50/p90 by linear interpolation over clean runs (numpy.percentile)",
            "runs_per_config": args.runs,
            "sessions": "one fresh AgentSession per run, closed after it; runs sequential",
            "audio": speech.describe(),
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "livekit_agents": metadata.version("livekit-agents"),
            },
            "environment_variables_set": env,
            "dotenv_present": Path(".env").exists(),
        }
    }


def summary(records: Sequence[dict[str, Any]]) -> str:
    """A table for people (stderr): latencies in ms over clean runs, and the turn settings."""

    def cell(value: Any) -> str:
        return f"{value:7.1f}" if isinstance(value, float) else f"{'-':>7}"

    width = max(len(r["config"]) for r in records)
    lines = [
        f"{'config':<{width}}  {'p50':>7}  {'p90':>7}  {'mean':>7}  {'max':>7}  cut_off  "
        "turns vad_silence min_delay max_delay"
    ]
    for r in records:
        s = r["settings"]
        detection = str(s.get("turn_detection")).split(":")[0]
        lines.append(
            f"{r['config']:<{width}}  {cell(r['p50_ms'])}  {cell(r['p90_ms'])}  "
            f"{cell(r['mean_ms'])}  {cell(r['max_ms'])}  {r['cut_off']:>3}/{r['runs']:<3}  "
            f"{detection:<5} {s.get('vad_min_silence_duration')!s:>11} "
            f"{s.get('min_endpointing_delay')!s:>9} {s.get('max_endpointing_delay')!s:>9}"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    try:
        speech = (
            file_speech(args.audio, args.transcript or " ".join(DEFAULT_PHRASES))
            if args.audio
            else default_speech(args.pause)
        )
    except (OSError, ValueError, EOFError) as exc:  # wave raises them for unreadable files
        raise SystemExit(f"cannot use the audio: {exc}") from None
    configs = build_configs(args)

    def say(text: str) -> None:
        if not args.json_only:
            print(text, file=sys.stderr)

    print(json.dumps(method(args, speech)), flush=True)
    warnings = WarningLog()
    root = logging.getLogger()
    root.addHandler(warnings)  # instead of printing them: counted per configuration
    root.setLevel(logging.WARNING)
    if args.verbose:
        loud = logging.StreamHandler(sys.stderr)
        loud.setLevel(logging.WARNING)
        root.addHandler(loud)
    eot = EotLog()
    livekit_log = logging.getLogger("livekit.agents")
    livekit_log.setLevel(logging.DEBUG)  # for its "eot prediction" records only
    livekit_log.addHandler(eot)
    records = []
    for config in configs:
        say(f"{config.name}:")
        record = await run_config(
            config,
            speech,
            runs=args.runs,
            endpoint_silence=args.endpoint_silence,
            warnings=warnings,
            eot=eot,
            progress=say,
        )
        records.append(record)
        print(json.dumps(record), flush=True)
    say("\n" + summary(records))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bench.turn_latency",
        description="End of user speech -> first agent audio, with zero-latency providers.",
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per configuration")
    parser.add_argument("--audio", type=Path, help="a mono 16-bit WAV instead of espeak-ng")
    parser.add_argument(
        "--transcript", help="what the fake STT hears in --audio (spread over its phrases)"
    )
    parser.add_argument(
        "--pause", type=float, default=0.6, help="seconds between the two default phrases"
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a Settings override (repeatable): all of them make one extra clara "
        "configuration, built with load_settings(**overrides)",
    )
    parser.add_argument("--sweep", action="store_true", help="also run candidate defaults")
    parser.add_argument(
        "--stt",
        choices=("batch", "streaming"),
        default="batch",
        help="fake STT of the default configurations",
    )
    parser.add_argument(
        "--endpoint-silence",
        type=float,
        default=0.3,
        help="silence after which the streaming fake STT endpoints (seconds)",
    )
    parser.add_argument("--json-only", action="store_true", help="only the JSON lines")
    parser.add_argument("--verbose", action="store_true", help="print livekit's warnings")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.pause < 0:
        parser.error("--pause cannot be negative")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
