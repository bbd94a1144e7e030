"""The real-audio helpers (testkit/audio.py) against livekit's real pieces: no providers, no room.

espeak-ng renders the speech, livekit's bundled silero VAD (livekit-local-inference) hears it,
and livekit's own ``AgentSession`` plays through the capture output.
"""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession, inference, vad
from livekit.agents.voice.events import UserStateChangedEvent
from livekit.agents.voice.speech_handle import INTERRUPTION_TIMEOUT

from testkit.audio import (
    CaptureAudioOutput,
    CaptureTextOutput,
    EspeakNotFoundError,
    SpeechCache,
    WavAudioInput,
    aiter_frames,
    default_speech_cache,
    duration_of,
    energy,
    find_espeak,
    load_frames,
    pcm_of,
    silence,
    speech_wav,
    voiced_duration,
    voiced_span,
)
from testkit.tasks import other_tasks

# ~2.6 s of voiced espeak speech at the default 175 wpm; no commas, so no long inner pause
SENTENCE = "Hello Clara what is the weather like in Paris today"


def wav_duration(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        return wav.getnframes() / wav.getframerate()


@asynccontextmanager
async def running_session(session: AgentSession[None]) -> AsyncIterator[AgentSession[None]]:
    """Start ``session``; on exit close it and check it left no task behind."""
    before = other_tasks()
    await session.start(Agent(instructions="You are Clara."))
    try:
        yield session
    finally:
        await session.aclose()
    leftovers = other_tasks() - before
    assert not leftovers, f"tasks left behind by the session: {leftovers}"


def quiet_session(*, voice_activity: vad.VAD | None = None) -> AgentSession[None]:
    """A provider-less session: no user-away timer, no echo-cancellation warm-up."""
    return AgentSession[None](vad=voice_activity, user_away_timeout=None, aec_warmup_duration=None)


# -- speech_wav / load_frames ------------------------------------------------------------------


def test_speech_wav_renders_a_sentence_once(tmp_path: Path) -> None:
    espeak = find_espeak()
    # a wrapper that logs each real espeak-ng run, so caching is observed from outside
    log = tmp_path / "runs.log"
    wrapper = tmp_path / "espeak-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho run >> "{log}"\nexec "{espeak}" "$@"\n')
    wrapper.chmod(0o755)
    cache = SpeechCache(tmp_path / "cache", espeak=str(wrapper))

    path = cache.wav(SENTENCE)
    # 10 words at espeak's default 175 wpm is ~3.4 s of audio; its own pauses included
    assert 1.5 < wav_duration(path) < 6.0
    assert cache.wav(SENTENCE) == path
    assert log.read_text().splitlines() == ["run"]
    assert cache.runs == 1

    slow = cache.wav(SENTENCE, wpm=100)
    assert slow != path
    assert wav_duration(slow) > 1.3 * wav_duration(path)
    assert cache.runs == 2 and len(log.read_text().splitlines()) == 2

    # the session-wide cache behind speech_wav: same path, no second run
    first = speech_wav("Good morning")
    runs = default_speech_cache().runs
    assert speech_wav("Good morning") == first
    assert default_speech_cache().runs == runs


def test_a_missing_espeak_is_a_clear_error(tmp_path: Path) -> None:
    cache = SpeechCache(tmp_path, espeak="espeak-ng-is-not-installed")
    with pytest.raises(EspeakNotFoundError, match=r"apt-get install espeak-ng"):
        cache.wav("hello")


def test_load_frames_resamples_pads_and_slices() -> None:
    path = speech_wav(SENTENCE)
    frames = load_frames(path, sample_rate=24000, frame_ms=20)

    assert {(f.sample_rate, f.num_channels, f.samples_per_channel) for f in frames} == {
        (24000, 1, 480)
    }
    expected = 0.5 + wav_duration(path) + 1.0
    assert expected - 0.01 <= duration_of(frames) <= expected + 0.03
    assert energy(frames[:25]) == 0.0  # 0.5 s of leading silence
    assert energy(frames[-50:]) == 0.0  # 1.0 s of trailing silence
    assert energy(frames) > 0.01
    start, _ = voiced_span(frames)
    assert 0.5 <= start < 0.6

    wideband = load_frames(path, sample_rate=16000, frame_ms=10, leading_silence=0)
    assert {f.samples_per_channel for f in wideband} == {160}
    assert abs(voiced_duration(wideband) - voiced_duration(frames)) < 0.02
    assert energy(silence(0.1)) == 0.0 and duration_of(silence(0.1)) == pytest.approx(0.1)


async def test_closing_the_input_drops_what_it_has_not_said_and_ends_iteration() -> None:
    mic = WavAudioInput()
    received: list[rtc.AudioFrame] = []

    async def pump() -> None:
        async for frame in mic:
            received.append(frame)

    pump_task = asyncio.create_task(pump())
    utterance = mic.say(silence(1.0))
    await mic.wait_frames_sent(3, timeout=1.0)
    mic.close()
    await asyncio.wait_for(pump_task, timeout=0.5)  # woken at once, not at the next frame

    assert 3 <= len(received) < 10
    assert utterance.dropped and not utterance.sent.is_set()
    with pytest.raises(RuntimeError, match="closed before the utterance was fully sent"):
        await utterance.wait_sent(timeout=0.1)
    with pytest.raises(RuntimeError, match="closed"):
        mic.say(silence(0.1))


# -- WavAudioInput -----------------------------------------------------------------------------


async def test_real_speech_through_the_input_reaches_the_bundled_vad_in_real_time() -> None:
    frames = load_frames(speech_wav(SENTENCE))
    voiced_start, voiced_end = voiced_span(frames)
    loop = asyncio.get_running_loop()
    before = other_tasks()

    mic = WavAudioInput()
    stream = inference.VAD().stream()

    async def pump() -> None:
        async for frame in mic:
            stream.push_frame(frame)

    pump_task = asyncio.create_task(pump())
    utterance = mic.say(frames)
    said_at = time.perf_counter()
    assert utterance.duration >= 2.5

    events: list[tuple[vad.VADEvent, float]] = []
    async with asyncio.timeout(utterance.duration + 2.0):
        async for ev in stream:
            if ev.type in (vad.VADEventType.START_OF_SPEECH, vad.VADEventType.END_OF_SPEECH):
                events.append((ev, loop.time()))
            if ev.type == vad.VADEventType.END_OF_SPEECH:
                break
    await utterance.wait_sent(timeout=utterance.duration + 1.0)
    wall = time.perf_counter() - said_at

    assert [ev.type for ev, _ in events] == [
        vad.VADEventType.START_OF_SPEECH,
        vad.VADEventType.END_OF_SPEECH,
    ]
    (_, start_at), (end, end_at) = events
    assert end.speech_duration == pytest.approx(voiced_end - voiced_start, abs=0.5)

    # real time: the audio takes its own duration to go through, with no drift
    assert utterance.duration - 0.1 <= wall <= utterance.duration + 0.3
    assert utterance.started_at is not None and utterance.sent_at is not None
    assert utterance.sent_at - utterance.started_at == pytest.approx(
        utterance.duration - 0.02, abs=0.05
    )
    # and the VAD heard each moment when it happened, not all at once
    assert start_at - utterance.started_at == pytest.approx(voiced_start, abs=0.4)
    assert end_at - utterance.started_at == pytest.approx(voiced_end + 0.25, abs=0.4)

    # the microphone keeps sending silence between utterances until closed
    sent = mic.frames_sent
    assert mic.idle
    await mic.wait_frames_sent(sent + 5, timeout=1.0)
    mic.close()
    await asyncio.wait_for(pump_task, timeout=1.0)
    await stream.aclose()
    assert other_tasks() - before == set()


async def test_the_session_hears_the_input_and_detaches_it_on_close() -> None:
    frames = load_frames(speech_wav("What time is it"), trailing_silence=0.6)
    voiced_start, voiced_end = voiced_span(frames)
    loop = asyncio.get_running_loop()
    mic = WavAudioInput()
    session = quiet_session(voice_activity=inference.VAD())
    session.input.audio = mic
    states: list[tuple[str, float]] = []
    stopped = asyncio.Event()

    def on_user_state(ev: UserStateChangedEvent) -> None:
        states.append((ev.new_state, loop.time()))
        if ev.new_state == "listening":
            stopped.set()

    session.on("user_state_changed", on_user_state)

    async with running_session(session):
        assert mic.attached
        utterance = mic.say(frames)
        await asyncio.wait_for(stopped.wait(), timeout=utterance.duration + 2.0)
        await utterance.wait_sent(timeout=utterance.duration)

    assert not mic.attached
    assert [state for state, _ in states] == ["speaking", "listening"]
    assert utterance.started_at is not None
    (_, speaking_at), (_, listening_at) = states
    assert speaking_at - utterance.started_at == pytest.approx(voiced_start, abs=0.4)
    assert listening_at - utterance.started_at == pytest.approx(voiced_end + 0.25, abs=0.4)


# -- CaptureAudioOutput ------------------------------------------------------------------------


async def test_session_say_plays_prerendered_audio_through_the_capture_output() -> None:
    frames = load_frames(speech_wav("Hi there"), leading_silence=0.0, trailing_silence=0.2)
    duration = duration_of(frames)
    loop = asyncio.get_running_loop()
    out = CaptureAudioOutput()
    session = quiet_session()
    session.output.audio = out
    agent_states: list[str] = []
    session.on("agent_state_changed", lambda ev: agent_states.append(ev.new_state))

    async with running_session(session):
        said_at = loop.time()
        handle = session.say("hi", audio=aiter_frames(frames))
        segment = await out.next_segment(timeout=1.0)
        await asyncio.wait_for(handle.wait_for_playout(), timeout=duration + 1.0)
        elapsed = loop.time() - said_at

    assert handle.done() and not handle.interrupted
    # it took as long as the audio lasts (real-time playout), and no playout timeout
    assert duration - 0.05 <= elapsed <= duration + 1.0
    assert segment.finished.is_set() and segment.interrupted is False
    assert segment.playback_position == pytest.approx(duration)
    assert segment.started_at is not None and segment.finished_at is not None
    assert segment.finished_at - segment.started_at == pytest.approx(duration, abs=0.01)
    assert segment.pcm == pcm_of(frames)
    assert segment.sample_rate == 24000 and energy(segment.frames) > 0.01
    assert out.segments == [segment]
    # livekit saw the playback start and finish: the agent spoke, then listened again
    assert agent_states == ["listening", "speaking", "listening"]


async def test_an_interruption_clears_the_capture_output_at_once() -> None:
    frames = load_frames(speech_wav(SENTENCE), leading_silence=0.0, trailing_silence=0.0)
    loop = asyncio.get_running_loop()
    out = CaptureAudioOutput()
    session = quiet_session()
    session.output.audio = out

    async with running_session(session):
        handle = session.say("a long answer", audio=aiter_frames(frames))
        segment = await out.next_segment(timeout=1.0)
        await asyncio.sleep(0.3)  # let 0.3 s of it play
        interrupted_at = loop.time()
        handle.interrupt()
        await asyncio.wait_for(handle.wait_for_playout(), timeout=1.0)
        took = loop.time() - interrupted_at

    assert handle.interrupted
    assert took < 0.5 < INTERRUPTION_TIMEOUT  # livekit never had to give up on the output
    assert segment.interrupted is True
    assert segment.playback_position == pytest.approx(0.3, abs=0.1)
    assert segment.playback_position < segment.duration


async def test_capture_output_plays_segments_in_turn_and_pauses() -> None:
    loop = asyncio.get_running_loop()
    out = CaptureAudioOutput()
    started: list[float] = []
    out.on("playback_started", lambda ev: started.append(ev.created_at))

    out.flush()  # nothing captured: nothing to report
    assert out.captured_playout_segments == 0 and not out.playing

    t0 = loop.time()
    for frame in silence(0.2):
        await out.capture_frame(frame)
    out.flush()
    for frame in silence(0.2):
        await out.capture_frame(frame)
    out.flush()
    first = await out.next_segment(timeout=0.1)
    second = await out.next_segment(timeout=0.1)
    assert first.started_at == pytest.approx(t0, abs=0.01)
    assert second.started_at is None  # queued until the first ends

    await second.wait_finished(timeout=1.0)
    assert first.finished_at == pytest.approx(t0 + 0.2, abs=0.03)
    assert second.started_at == first.finished_at  # queued behind the first
    assert second.finished_at == pytest.approx(t0 + 0.4, abs=0.03)
    assert len(started) == 2
    ev = await asyncio.wait_for(out.wait_for_playout(), timeout=0.1)
    assert ev.playback_position == pytest.approx(0.2) and not ev.interrupted

    # a pause stops the playhead; the segment ends that much later
    t1 = loop.time()
    for frame in silence(0.2):
        await out.capture_frame(frame)
    out.flush()
    third = await out.next_segment(timeout=0.1)
    await asyncio.sleep(0.1)
    out.pause()
    await asyncio.sleep(0.2)
    assert not third.finished.is_set()
    out.resume()
    await third.wait_finished(timeout=1.0)
    assert third.finished_at == pytest.approx(t1 + 0.4, abs=0.05)
    assert third.interrupted is False and third.playback_position == pytest.approx(0.2)
    await out.wait_idle(timeout=0.1)


async def test_capture_text_output_records_a_text_only_reply() -> None:
    text = CaptureTextOutput()
    session = quiet_session()
    session.output.transcription = text

    async with running_session(session):
        handle = session.say("Hello, I am Clara.")
        reply = await text.next_reply(timeout=2.0)
        await asyncio.wait_for(handle.wait_for_playout(), timeout=2.0)

    assert reply == "Hello, I am Clara."
    assert text.pending_text == ""


def test_frames_helpers_reject_what_a_microphone_cannot_send() -> None:
    mic = WavAudioInput(sample_rate=24000)
    narrowband = rtc.AudioFrame.create(8000, 1, 160)
    with pytest.raises(ValueError, match="24000 Hz"):
        mic.say([narrowband])
    with pytest.raises(ValueError, match="whole number of samples"):
        load_frames(speech_wav("Hi there"), sample_rate=22050, frame_ms=15)
