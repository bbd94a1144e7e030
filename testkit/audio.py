"""Real-audio test helpers: espeak-ng speech, a real-time microphone, a real-time speaker.

Everything here plugs into livekit's own audio seams (``livekit.agents.voice.io``), so a test
drives the real ``AgentSession`` / VAD code paths with real speech and real timing:

* :func:`speech_wav` renders text with ``espeak-ng`` (cached, at most once per text per
  session) and :func:`load_frames` turns the WAV into ``rtc.AudioFrame`` s with livekit's
  resampler.
* :class:`WavAudioInput` is a microphone: it releases frames paced by the loop clock, speaks
  the utterances given to :meth:`WavAudioInput.say` and sends silence in between.
* :class:`CaptureAudioOutput` is a speaker: it records what the agent plays and plays it out in
  real time, reporting ``playback_started`` / ``playback_finished`` the way livekit expects.
  An output that never reports ``playback_finished`` leaves the ``SpeechHandle`` waiting for
  ever (``AudioOutput.wait_for_playout`` has no timeout) and, once the speech is interrupted or
  the session closes, makes livekit wait ``speech_handle.INTERRUPTION_TIMEOUT`` (5 s) before
  it cancels the speech and logs an error.
* :class:`CaptureTextOutput` records the text replies of a (text-only) session.

Every wait takes an explicit ``timeout`` and raises ``TimeoutError`` naming what it waited for.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
import wave
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from livekit import rtc
from livekit.agents.voice import io

# -- speech generation -------------------------------------------------------------------------

ESPEAK = "espeak-ng"

# part of every cache key: bump it when the way a WAV is generated changes
_CACHE_FORMAT = 1


class EspeakNotFoundError(RuntimeError):
    """espeak-ng is not installed: the audio tests need it (they never skip)."""


def find_espeak(name: str = ESPEAK) -> str:
    """The path of the espeak-ng executable; :class:`EspeakNotFoundError` when missing."""
    executable = shutil.which(name)
    if executable is None:
        raise EspeakNotFoundError(
            f"{name!r} was not found on PATH. The audio tests render real speech with it; "
            "install it (Debian/Ubuntu: `apt-get install espeak-ng`)."
        )
    return executable


class SpeechCache:
    """Renders text to WAV files with espeak-ng, each distinct request at most once.

    Files are named by a hash of everything that shapes the audio (text, voice, speed), written
    atomically, and reused for as long as the directory exists.
    """

    def __init__(self, directory: Path, *, espeak: str = ESPEAK) -> None:
        self.directory = directory
        self.espeak = espeak
        self.runs = 0
        """How many times this cache has run espeak-ng."""
        self._lock = threading.Lock()

    def wav(self, text: str, *, voice: str = "en-us", wpm: int | None = None) -> Path:
        if not text.strip():
            raise ValueError("speech_wav needs some text to speak")
        if wpm is not None and wpm <= 0:
            raise ValueError(f"wpm must be positive, got {wpm}")

        key = json.dumps(
            {"format": _CACHE_FORMAT, "text": text, "voice": voice, "wpm": wpm}, sort_keys=True
        )
        path = self.directory / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.wav"
        with self._lock:
            if not path.exists():
                self._generate(path, text, voice=voice, wpm=wpm)
        return path

    def _generate(self, path: Path, text: str, *, voice: str, wpm: int | None) -> None:
        executable = find_espeak(self.espeak)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.directory, prefix=".partial-", suffix=".wav")
        os.close(fd)
        tmp = Path(tmp_name)
        # the text goes through stdin so that one starting with "-" is not read as an option
        argv = [executable, "-v", voice, "-w", str(tmp), "--stdin"]
        if wpm is not None:
            argv[1:1] = ["-s", str(wpm)]
        try:
            self.runs += 1
            proc = subprocess.run(argv, input=text.encode(), capture_output=True, timeout=60)
            if proc.returncode != 0 or tmp.stat().st_size <= 44:  # 44: a bare WAV header
                raise RuntimeError(
                    f"espeak-ng failed (exit {proc.returncode}) for voice {voice!r}: "
                    f"{proc.stderr.decode(errors='replace').strip() or 'no audio produced'}"
                )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@functools.cache
def default_speech_cache() -> SpeechCache:
    """The cache :func:`speech_wav` uses: a fresh directory per test session (process)."""
    directory = Path(tempfile.mkdtemp(prefix="clara-voice-speech-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return SpeechCache(directory)


def speech_wav(text: str, *, voice: str = "en-us", wpm: int | None = None) -> Path:
    """A WAV file (mono, 16-bit, espeak-ng's native 22050 Hz) of ``text`` spoken by espeak-ng.

    Raises :class:`EspeakNotFoundError` when espeak-ng is not installed.
    """
    return default_speech_cache().wav(text, voice=voice, wpm=wpm)


# -- frames --------------------------------------------------------------------------------------


def read_wav_pcm(path: Path) -> tuple[bytes, int]:
    """The samples (s16le) and sample rate of a mono 16-bit PCM WAV file."""
    with wave.open(str(path), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2 or wav.getcomptype() != "NONE":
            raise ValueError(
                f"{path}: expected mono 16-bit PCM, got {wav.getnchannels()} channel(s), "
                f"{8 * wav.getsampwidth()}-bit, compression {wav.getcomptype()!r}"
            )
        return wav.readframes(wav.getnframes()), wav.getframerate()


def frame_samples(sample_rate: int, frame_ms: int) -> int:
    """Samples in a frame of ``frame_ms`` milliseconds; the rate must divide evenly."""
    if frame_ms <= 0 or (sample_rate * frame_ms) % 1000:
        raise ValueError(f"{frame_ms} ms is not a whole number of samples at {sample_rate} Hz")
    return sample_rate * frame_ms // 1000


def load_frames(
    path: Path,
    *,
    sample_rate: int = 24000,
    frame_ms: int = 20,
    leading_silence: float = 0.5,
    trailing_silence: float = 1.0,
) -> list[rtc.AudioFrame]:
    """The WAV at ``path`` as equal ``frame_ms`` frames at ``sample_rate``, padded with silence.

    Resampling goes through livekit's ``rtc.AudioResampler`` (the SDK's sox resampler). The
    last frame is completed with silence, so the trailing silence is at least
    ``trailing_silence``.
    """
    if leading_silence < 0 or trailing_silence < 0:
        raise ValueError("silence durations cannot be negative")
    per_frame = frame_samples(sample_rate, frame_ms)

    pcm, wav_rate = read_wav_pcm(path)
    if wav_rate != sample_rate and pcm:
        resampler = rtc.AudioResampler(
            input_rate=wav_rate,
            output_rate=sample_rate,
            quality=rtc.AudioResamplerQuality.HIGH,
        )
        resampled = [*resampler.push(bytearray(pcm)), *resampler.flush()]
        pcm = b"".join(f.data.tobytes() for f in resampled)

    lead = round(leading_silence * sample_rate)
    trail = round(trailing_silence * sample_rate)
    total = lead + len(pcm) // 2 + trail
    total += -total % per_frame
    samples = np.zeros(total, dtype=np.int16)
    samples[lead : lead + len(pcm) // 2] = np.frombuffer(pcm, dtype=np.int16)

    return [
        rtc.AudioFrame(samples[i : i + per_frame].tobytes(), sample_rate, 1, per_frame)
        for i in range(0, total, per_frame)
    ]


def silence(
    duration: float, *, sample_rate: int = 24000, frame_ms: int = 20
) -> list[rtc.AudioFrame]:
    """``duration`` seconds (rounded up to whole frames) of digital silence."""
    per_frame = frame_samples(sample_rate, frame_ms)
    count = math.ceil(round(duration * sample_rate) / per_frame)
    return [rtc.AudioFrame.create(sample_rate, 1, per_frame) for _ in range(count)]


def pcm_of(frames: Iterable[rtc.AudioFrame]) -> bytes:
    """The concatenated samples of ``frames`` (s16le)."""
    return b"".join(f.data.tobytes() for f in frames)


def samples_of(frames: Iterable[rtc.AudioFrame]) -> np.ndarray:
    """The concatenated samples of ``frames`` as an int16 array (channels interleaved)."""
    return np.frombuffer(pcm_of(frames), dtype=np.int16)


def duration_of(frames: Iterable[rtc.AudioFrame]) -> float:
    return sum(f.duration for f in frames)


def energy(frames: Iterable[rtc.AudioFrame]) -> float:
    """RMS of the samples relative to full scale: 0.0 is digital silence, 1.0 a full-scale square.

    espeak-ng speech sits around 0.1; anything above 0.01 is clearly not silence.
    """
    samples = samples_of(frames).astype(np.float64)
    if samples.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(samples**2)) / 32768.0)


def voiced_span(
    frames: Sequence[rtc.AudioFrame], *, window: float = 0.01, threshold: float = 0.02
) -> tuple[float, float]:
    """(start, end) in seconds of the audio between the first and last voiced window.

    A window is voiced when its RMS exceeds ``threshold`` times the loudest window's RMS. Pauses
    inside the span (between words) count as voiced, as they do for a VAD.
    """
    if not frames:
        raise ValueError("no frames")
    sample_rate = frames[0].sample_rate
    samples = samples_of(frames).astype(np.float64)
    size = max(1, round(window * sample_rate))
    count = samples.size // size
    if count == 0:
        raise ValueError("the audio is shorter than one window")
    rms = np.sqrt(np.mean(samples[: count * size].reshape(count, size) ** 2, axis=1))
    if rms.max() == 0:
        raise ValueError("the audio is silent")
    voiced = np.flatnonzero(rms > threshold * rms.max())
    return float(voiced[0] * size / sample_rate), float((voiced[-1] + 1) * size / sample_rate)


def voiced_duration(frames: Sequence[rtc.AudioFrame]) -> float:
    start, end = voiced_span(frames)
    return end - start


async def aiter_frames(frames: Iterable[rtc.AudioFrame]) -> AsyncIterator[rtc.AudioFrame]:
    """``frames`` as the async iterable ``AgentSession.say(audio=...)`` takes."""
    for frame in frames:
        yield frame


# -- waiting -----------------------------------------------------------------------------------


class _Changes:
    """Wakes every waiter whenever the owner's state changes."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._event.wait()
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}") from None


async def _wait_event(event: asyncio.Event, *, timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}") from None


# -- microphone --------------------------------------------------------------------------------


class Utterance:
    """One call to :meth:`WavAudioInput.say`; times are the running loop's ``loop.time()``."""

    def __init__(self, frames: Sequence[rtc.AudioFrame]) -> None:
        self.frames: tuple[rtc.AudioFrame, ...] = tuple(frames)
        self.duration = duration_of(self.frames)
        self.started_at: float | None = None
        """When its first frame was handed to the consumer."""
        self.sent_at: float | None = None
        """When its last frame was handed to the consumer."""
        self.sent = asyncio.Event()
        """Set once the last frame has been handed to the consumer."""
        self.dropped = False
        """The input was closed before the utterance was fully sent."""
        self._ended = asyncio.Event()

    async def wait_sent(self, *, timeout: float) -> Utterance:
        await _wait_event(self._ended, timeout=timeout, what="the utterance to be sent")
        if self.dropped:
            raise RuntimeError("the audio input was closed before the utterance was fully sent")
        return self

    def _end(self, *, dropped: bool) -> None:
        self.dropped = dropped
        if not dropped:
            self.sent.set()
        self._ended.set()


class WavAudioInput(io.AudioInput):
    """A live microphone made of pre-rendered frames.

    Frames are released in real time on the loop clock: frame *n* is handed out when the audio
    up to its end has "been recorded", at ``start + (samples up to and including n) / rate``
    (an absolute schedule, so a late consumer catches up instead of accumulating drift).
    Utterances given to :meth:`say` are spoken in order; in between, and after them, the input
    sends ``frame_ms`` frames of silence, as a microphone does, until :meth:`close`.

    It owns no task: the consumer's ``__anext__`` does the waiting, so when the session
    detaches the input and cancels its forwarding task, nothing is left behind. The clock
    restarts when the input is (re)attached.
    """

    def __init__(
        self, *, sample_rate: int = 24000, frame_ms: int = 20, label: str = "WavAudioInput"
    ) -> None:
        super().__init__(label=label)
        self.sample_rate = sample_rate
        self.frame_samples = frame_samples(sample_rate, frame_ms)
        self.attached = True  # as livekit's room input starts
        self.frames_sent = 0
        self.utterances: list[Utterance] = []
        self._queue: deque[Utterance] = deque()
        self._index = 0  # next frame of self._queue[0]
        self._clock_start: float | None = None
        self._released_samples = 0
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._changes = _Changes()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def idle(self) -> bool:
        """Nothing left to say: the input is sending silence."""
        return not self._queue

    def say(self, frames: Sequence[rtc.AudioFrame]) -> Utterance:
        """Queue ``frames`` to be spoken after whatever is queued already."""
        if self._closed:
            raise RuntimeError("the audio input is closed")
        for frame in frames:
            if frame.sample_rate != self.sample_rate or frame.num_channels != 1:
                raise ValueError(
                    f"the input is mono {self.sample_rate} Hz, got a {frame.num_channels}-channel "
                    f"{frame.sample_rate} Hz frame"
                )
        if not frames:
            raise ValueError("an utterance needs at least one frame")
        utterance = Utterance(frames)
        self.utterances.append(utterance)
        self._queue.append(utterance)
        return utterance

    def close(self) -> None:
        """Stop: the consumer's iteration ends, and unsent utterances are dropped."""
        if self._closed:
            return
        self._closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        while self._queue:
            self._queue.popleft()._end(dropped=True)
        self._changes.notify()

    async def aclose(self) -> None:
        self.close()

    async def wait_frames_sent(self, count: int, *, timeout: float) -> None:
        """Until ``count`` frames in all (speech and silence) have been handed out."""
        await self._changes.wait_until(
            lambda: self.frames_sent >= count, timeout=timeout, what=f"{count} frames sent"
        )

    def on_attached(self) -> None:
        self.attached = True
        self._clock_start = None
        super().on_attached()

    def on_detached(self) -> None:
        self.attached = False
        super().on_detached()

    async def __anext__(self) -> rtc.AudioFrame:
        # like livekit's room input, a detached input keeps "recording" and drops what it
        # records (push-to-talk detaches it between turns)
        while True:
            frame = await self._record_next()
            if self.attached:
                return frame

    async def _record_next(self) -> rtc.AudioFrame:
        if self._closed:
            raise StopAsyncIteration
        loop = asyncio.get_running_loop()
        if self._clock_start is None:
            self._clock_start = loop.time()
            self._released_samples = 0

        # the frame being "recorded" now; say() during the wait starts at the next frame
        utterance = self._queue[0] if self._queue else None
        frame = (
            utterance.frames[self._index]
            if utterance is not None
            else rtc.AudioFrame.create(self.sample_rate, 1, self.frame_samples)
        )
        due = self._clock_start + (self._released_samples + frame.samples_per_channel) / (
            self.sample_rate
        )
        await self._sleep_until(loop, due)
        if self._closed:
            raise StopAsyncIteration

        self._released_samples += frame.samples_per_channel
        self.frames_sent += 1
        if utterance is not None:
            now = loop.time()
            if self._index == 0:
                utterance.started_at = now
            self._index += 1
            if self._index == len(utterance.frames):
                self._queue.popleft()
                self._index = 0
                utterance.sent_at = now
                utterance._end(dropped=False)
        self._changes.notify()
        return frame

    async def _sleep_until(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if when <= loop.time():
            return
        waiter = loop.create_future()
        handle = loop.call_at(when, _resolve, waiter)
        self._waiter = waiter
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# -- speaker -----------------------------------------------------------------------------------

# durations are sums of float frame durations
_EPSILON = 1e-6


class CapturedSegment:
    """One playback segment (the audio between two ``flush()`` es) the agent played.

    Times are the running loop's ``loop.time()``.
    """

    def __init__(self, index: int, first_frame_at: float) -> None:
        self.index = index
        self.frames: list[rtc.AudioFrame] = []
        """Copies of the frames captured for playback (not those discarded by a clear)."""
        self.first_frame_at = first_frame_at
        """When its first frame was captured."""
        self.started_at: float | None = None
        """When it started playing (``playback_started``); later than ``first_frame_at`` when
        it queued behind an earlier segment."""
        self.finished_at: float | None = None
        self.interrupted: bool | None = None
        self.playback_position = 0.0
        """Seconds of it that played (what ``playback_finished`` reported)."""
        self.flushed = False
        self.discarded = 0.0
        """Seconds of audio captured after a clear_buffer() ended it, and dropped."""
        self.finished = asyncio.Event()
        self._pushed = 0.0
        self._played = 0.0

    @property
    def duration(self) -> float:
        """Seconds of audio captured for playback."""
        return self._pushed

    @property
    def sample_rate(self) -> int:
        return self.frames[0].sample_rate

    @property
    def pcm(self) -> bytes:
        return pcm_of(self.frames)

    async def wait_finished(self, *, timeout: float) -> CapturedSegment:
        await _wait_event(
            self.finished, timeout=timeout, what=f"playback of segment {self.index} to finish"
        )
        return self

    def __repr__(self) -> str:
        state = (
            "playing"
            if self.finished_at is None
            else ("interrupted" if self.interrupted else "finished")
        )
        return (
            f"CapturedSegment(index={self.index}, duration={self.duration:.3f}, "
            f"played={self._played:.3f}, {state})"
        )


class CaptureAudioOutput(io.AudioOutput):
    """A speaker that records what the agent plays and plays it out in real time.

    A single playhead runs over the captured audio on the loop clock, in capture order:

    * a segment starts playing (``on_playback_started``) when its first frame is captured, or
      when the segment before it ends if it was queued behind one;
    * it finishes (``on_playback_finished(interrupted=False)``) once it has been flushed and all
      its audio has played (``duration`` after it started, plus any underrun or pause);
    * ``clear_buffer()`` ends every unfinished segment at once with ``interrupted=True`` and the
      position reached; audio captured for a cleared segment before its flush is dropped;
    * ``pause()`` stops the playhead, ``resume()`` restarts it (``can_pause`` like RoomIO's).

    ``flush()`` without captured audio reports nothing (livekit counts a segment only when a
    frame is captured), so every captured segment gets exactly one ``playback_finished``.
    """

    def __init__(
        self,
        *,
        label: str = "CaptureAudioOutput",
        sample_rate: int | None = None,
        can_pause: bool = True,
    ) -> None:
        super().__init__(
            label=label,
            capabilities=io.AudioOutputCapabilities(pause=can_pause),
            sample_rate=sample_rate,
        )
        self.segments: list[CapturedSegment] = []
        self.attached = False
        self._pending: deque[CapturedSegment] = deque()  # unfinished, in playout order
        self._open: CapturedSegment | None = None  # capturing, until flush()
        self._paused = False
        self._clock: float | None = None  # loop time the playhead has been advanced to
        self._timer: asyncio.TimerHandle | None = None
        self._cursor = 0
        self._changes = _Changes()

    # -- what tests read and await ---------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def playing(self) -> bool:
        """Some captured audio has not finished playing."""
        return bool(self._pending)

    @property
    def frames(self) -> list[rtc.AudioFrame]:
        return [f for segment in self.segments for f in segment.frames]

    async def next_segment(self, *, timeout: float) -> CapturedSegment:
        """The next segment not yet returned, once its first frame has been captured."""
        index = self._cursor
        await self._changes.wait_until(
            lambda: len(self.segments) > index,
            timeout=timeout,
            what=f"the first frame of segment {index}",
        )
        self._cursor = index + 1
        return self.segments[index]

    async def wait_idle(self, *, timeout: float) -> None:
        """Until every captured segment has finished playing."""
        await self._changes.wait_until(
            lambda: not self._pending, timeout=timeout, what="playback to go idle"
        )

    # -- the AudioOutput seam ------------------------------------------------------------------

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        now = self._advance()
        segment = self._open
        if segment is None:
            segment = CapturedSegment(len(self.segments), now)
            self.segments.append(segment)
            self._pending.append(segment)
            self._open = segment
            self._changes.notify()

        if segment.finished_at is not None:  # cleared before its flush
            segment.discarded += frame.duration
            return

        segment.frames.append(
            rtc.AudioFrame(
                frame.data.tobytes(),
                frame.sample_rate,
                frame.num_channels,
                frame.samples_per_channel,
            )
        )
        segment._pushed += frame.duration
        self._advance(now)  # starts it if the playhead is free
        self._reschedule()

    def flush(self) -> None:
        super().flush()
        segment, self._open = self._open, None
        if segment is None:
            return
        segment.flushed = True
        self._advance()  # finishes it at once if it has already played out
        self._reschedule()

    def clear_buffer(self) -> None:
        now = self._advance()
        self._cancel_timer()
        while self._pending:
            self._finish(self._pending[0], at=now, interrupted=True)

    def pause(self) -> None:
        super().pause()
        if self._paused:
            return
        self._advance()
        self._paused = True
        self._cancel_timer()
        self._changes.notify()

    def resume(self) -> None:
        super().resume()
        if not self._paused:
            return
        self._advance()  # a paused playhead does not move: this only catches the clock up
        self._paused = False
        self._advance()
        self._reschedule()
        self._changes.notify()

    def on_attached(self) -> None:
        self.attached = True
        super().on_attached()

    def on_detached(self) -> None:
        self.attached = False
        super().on_detached()

    # -- the playhead ----------------------------------------------------------------------

    def _advance(self, now: float | None = None) -> float:
        """Move the playhead to ``now``, starting and finishing segments on the way."""
        loop = asyncio.get_running_loop()
        if now is None:
            now = loop.time()
        t = now if self._clock is None else min(self._clock, now)
        while self._pending:
            segment = self._pending[0]
            if segment.started_at is None:
                if self._paused or segment._pushed <= 0:
                    break
                self._start(segment, at=t)
            left = segment._pushed - segment._played
            if left > _EPSILON:
                if self._paused or t >= now:
                    break
                step = min(left, now - t)
                segment._played += step
                t += step
                continue
            if not segment.flushed:
                break  # underrun: it waits for more audio
            segment._played = segment._pushed
            self._finish(segment, at=t, interrupted=False)
        self._clock = now
        return now

    def _start(self, segment: CapturedSegment, *, at: float) -> None:
        segment.started_at = at
        # livekit's created_at is wall-clock time.time()
        wall = time.time() - (asyncio.get_running_loop().time() - at)
        self.on_playback_started(created_at=wall)
        self._changes.notify()

    def _finish(self, segment: CapturedSegment, *, at: float, interrupted: bool) -> None:
        self._pending.remove(segment)
        segment.finished_at = at
        segment.interrupted = interrupted
        segment.playback_position = min(segment._played, segment._pushed)
        segment.finished.set()
        self.on_playback_finished(
            playback_position=segment.playback_position, interrupted=interrupted
        )
        self._changes.notify()

    def _reschedule(self) -> None:
        """Wake up when the playing segment is due to finish (if it has been flushed)."""
        self._cancel_timer()
        if self._paused or not self._pending:
            return
        head = self._pending[0]
        if not head.flushed or head.started_at is None or self._clock is None:
            return
        when = self._clock + max(0.0, head._pushed - head._played)
        self._timer = asyncio.get_running_loop().call_at(when, self._on_timer, when)

    def _on_timer(self, when: float) -> None:
        self._timer = None
        # asyncio may run a timer up to its clock resolution early
        self._advance(max(asyncio.get_running_loop().time(), when))
        self._reschedule()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# -- text --------------------------------------------------------------------------------------


class CaptureTextOutput(io.TextOutput):
    """Records the text the agent outputs; each ``flush()`` completes one reply."""

    def __init__(
        self, *, label: str = "CaptureTextOutput", next_in_chain: io.TextOutput | None = None
    ) -> None:
        super().__init__(label=label, next_in_chain=next_in_chain)
        self.replies: list[str] = []
        """Every flushed reply, in order (empty when a reply produced no text)."""
        self.attached = False
        self._parts: list[str] = []
        self._cursor = 0
        self._changes = _Changes()

    @property
    def pending_text(self) -> str:
        """Text captured since the last flush."""
        return "".join(self._parts)

    async def capture_text(self, text: str) -> None:
        self._parts.append(text)
        self._changes.notify()
        if self.next_in_chain is not None:
            await self.next_in_chain.capture_text(text)

    def flush(self) -> None:
        self.replies.append("".join(self._parts))
        self._parts.clear()
        self._changes.notify()
        if self.next_in_chain is not None:
            self.next_in_chain.flush()

    async def next_reply(self, *, timeout: float, skip_empty: bool = True) -> str:
        """The next flushed reply not yet returned (empty ones are skipped unless asked for)."""

        def ready() -> bool:
            while self._cursor < len(self.replies):
                if self.replies[self._cursor] or not skip_empty:
                    return True
                self._cursor += 1
            return False

        await self._changes.wait_until(ready, timeout=timeout, what="a flushed reply")
        reply = self.replies[self._cursor]
        self._cursor += 1
        return reply

    def on_attached(self) -> None:
        self.attached = True
        super().on_attached()

    def on_detached(self) -> None:
        self.attached = False
        super().on_detached()
