"""The smoke-test client's audio: a WAV as a microphone, the agent's voice as a recording,
and the voice-to-voice latency between the two.

Everything here is independent of the room, so :mod:`clara_voice.client` can keep one
microphone and one recording across reconnections, and the latency arithmetic can be tested
on synthetic frames. Times are the running loop's ``loop.time()``.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import wave
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from pathlib import Path

import numpy as np
from livekit import rtc

from clara_voice.logging import get_logger

DEFAULT_THRESHOLD_DBFS = -45.0
"""A frame whose RMS level is at or above this counts as voiced (espeak or TTS speech sits
around -20 dBFS; digital or decoded silence far below)."""

RECORD_SAMPLE_RATE = 48_000
FRAME_MS = 20

_log = get_logger("clara_voice.client")


class WavFormatError(ValueError):
    """The WAV file cannot be published (unreadable, not 16-bit PCM, or empty)."""


def level_dbfs(frame: rtc.AudioFrame) -> float:
    """The frame's RMS level in dBFS (``-inf`` for digital silence)."""
    samples = np.frombuffer(frame.data, dtype=np.int16).astype(np.float64)
    if samples.size == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(samples * samples)))
    return -math.inf if rms == 0 else 20 * math.log10(rms / 32768)


def is_voiced(frame: rtc.AudioFrame, threshold_dbfs: float = DEFAULT_THRESHOLD_DBFS) -> bool:
    return level_dbfs(frame) >= threshold_dbfs


class LatencyMeter:
    """Voice-to-voice latency: end of our speech → the agent's first voiced frame after it.

    The end of our speech is the end of the last voiced frame sent (its send time plus its
    duration); the reply is the first voiced frame received at or after that moment, so the
    agent's audio heard while we were still speaking never counts.
    """

    def __init__(self, *, threshold_dbfs: float = DEFAULT_THRESHOLD_DBFS) -> None:
        self.threshold_dbfs = threshold_dbfs
        self.speech_end: float | None = None
        self.last_voiced_received: float | None = None
        self._voiced_received: list[float] = []  # arrival times, in order

    def on_sent(self, at: float, frame: rtc.AudioFrame) -> None:
        if is_voiced(frame, self.threshold_dbfs):
            end = at + frame.duration
            self.speech_end = end if self.speech_end is None else max(self.speech_end, end)

    def on_received(self, at: float, frame: rtc.AudioFrame) -> None:
        if is_voiced(frame, self.threshold_dbfs):
            self._voiced_received.append(at)
            self.last_voiced_received = at

    @property
    def reply_start(self) -> float | None:
        if self.speech_end is None:
            return None
        i = bisect.bisect_left(self._voiced_received, self.speech_end)
        return self._voiced_received[i] if i < len(self._voiced_received) else None

    @property
    def latency(self) -> float | None:
        """Seconds from the end of our speech to the reply, ``None`` until both happened."""
        start = self.reply_start
        return None if start is None or self.speech_end is None else start - self.speech_end


def voice_to_voice_latency(
    sent: Iterable[tuple[float, rtc.AudioFrame]],
    received: Iterable[tuple[float, rtc.AudioFrame]],
    *,
    threshold_dbfs: float = DEFAULT_THRESHOLD_DBFS,
) -> float | None:
    """:class:`LatencyMeter`'s figure for timed frames ``(at, frame)`` sent and received."""
    meter = LatencyMeter(threshold_dbfs=threshold_dbfs)
    for at, frame in sent:
        meter.on_sent(at, frame)
    for at, frame in sorted(received, key=lambda timed: timed[0]):
        meter.on_received(at, frame)
    return meter.latency


# -- the microphone ------------------------------------------------------------------------


def load_wav_frames(path: Path, *, frame_ms: int = FRAME_MS) -> list[rtc.AudioFrame]:
    """The WAV's audio as frames of ``frame_ms`` (the last one padded with silence)."""
    try:
        with wave.open(str(path), "rb") as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            pcm = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise WavFormatError(f"cannot read {path}: {exc}") from None
    if width != 2:
        raise WavFormatError(f"{path} is {8 * width}-bit: only 16-bit PCM WAV is supported")
    if not pcm:
        raise WavFormatError(f"{path} has no audio")
    per_frame = rate * frame_ms // 1000
    frame_bytes = per_frame * channels * 2
    frames = []
    for start in range(0, len(pcm), frame_bytes):
        chunk = pcm[start : start + frame_bytes].ljust(frame_bytes, b"\0")
        frames.append(rtc.AudioFrame(chunk, rate, channels, per_frame))
    return frames


class Microphone:
    """Pushes frames into an ``rtc.AudioSource`` in real time, on the loop clock.

    Frames go out back to back (one frame duration apart) for as long as the caller keeps
    pushing; after a pause the clock restarts from now. Every frame sent is shown to the
    meter with the time it started.
    """

    def __init__(self, source: rtc.AudioSource, meter: LatencyMeter) -> None:
        self.source = source
        self._meter = meter
        self._next_at: float | None = None

    def silence(self, seconds: float) -> list[rtc.AudioFrame]:
        per_frame = self.source.sample_rate * FRAME_MS // 1000
        count = max(0, round(seconds * 1000 / FRAME_MS))
        channels = self.source.num_channels
        return [rtc.AudioFrame.create(self.source.sample_rate, channels, per_frame)] * count

    async def push(self, frames: list[rtc.AudioFrame]) -> None:
        loop = asyncio.get_running_loop()
        for frame in frames:
            now = loop.time()
            at = now if self._next_at is None or self._next_at < now - 0.1 else self._next_at
            if at > now:
                await asyncio.sleep(at - now)
            await self.source.capture_frame(frame)
            self._meter.on_sent(at, frame)
            self._next_at = at + frame.duration

    async def keep_silent(self) -> None:
        """Silence for ever (as a real microphone would send), until cancelled."""
        chunk = self.silence(1.0)
        while True:
            await self.push(chunk)


# -- the speaker ---------------------------------------------------------------------------


async def open_agent_audio(track: rtc.Track) -> AsyncIterator[rtc.AudioFrame]:
    """The frames of a remote audio track, 48 kHz mono, as they arrive."""
    stream = rtc.AudioStream.from_track(track=track, sample_rate=RECORD_SAMPLE_RATE, num_channels=1)
    try:
        async for event in stream:
            yield event.frame
    finally:
        await stream.aclose()


class Recorder:
    """Feeds the agent's audio to the meter, optionally writes it to a WAV file, and tells
    when the agent's reply is over (``reply_silence`` seconds of silence after it)."""

    def __init__(
        self, meter: LatencyMeter, path: Path | None = None, *, reply_silence: float = 1.5
    ) -> None:
        self._meter = meter
        self._reply_silence = reply_silence
        self.reply_finished = asyncio.Event()
        self.frames_received = 0
        self._wav: wave.Wave_write | None = None
        if path is not None:
            self._wav = wave.open(str(path), "wb")  # noqa: SIM115 (closed by close())
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(RECORD_SAMPLE_RATE)

    async def consume(self, frames: AsyncIterable[rtc.AudioFrame]) -> None:
        loop = asyncio.get_running_loop()
        async for frame in frames:
            at = loop.time()
            self.frames_received += 1
            self._meter.on_received(at, frame)
            self._write(frame)
            last = self._meter.last_voiced_received
            replied = self._meter.reply_start is not None
            if replied and last is not None and at - last >= self._reply_silence:
                self.reply_finished.set()

    def _write(self, frame: rtc.AudioFrame) -> None:
        if self._wav is None:
            return
        if frame.sample_rate != RECORD_SAMPLE_RATE or frame.num_channels != 1:
            _log.warning(
                "agent audio frame in an unexpected format, not recorded",
                extra={"sample_rate": frame.sample_rate, "channels": frame.num_channels},
            )
            return
        self._wav.writeframes(frame.data.tobytes())

    def close(self) -> None:
        """Finish the WAV file; safe to call twice."""
        wav, self._wav = self._wav, None
        if wav is not None:
            wav.close()
