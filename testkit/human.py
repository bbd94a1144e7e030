"""A real client participant for the end-to-end tests: what a person's app does and sees.

:class:`Human` joins a room on the real server with the livekit rtc SDK (its own
``rtc.Room``), publishes a microphone that sends 20 ms frames in real time (silence, or
espeak-ng speech when told to :meth:`Human.say` something), and records everything the
agent sends it, as the app would receive it through the SFU:

* the agent's audio tracks it is subscribed to, with the RMS level of every frame heard
  and when it was heard (:class:`HeardAudio`);
* the text streams on ``lk.transcription`` (sender, attributes, text) and ``lk.chat``;
* the ``clara.sync`` data packets;
* every attribute change of the agent participant.

Tests wait on what a Human recorded with :meth:`Human.wait_until` (a condition re-checked
on every recorded event, with a timeout), never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from livekit import rtc

from testkit.audio import load_frames, speech_wav, voiced_span
from testkit.livekit_server import AGENT_NAME, LiveKitServer

T = TypeVar("T")

SAMPLE_RATE = 48000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
SOUND_RMS = 0.01
"""A frame whose RMS (relative to full scale) is above this is sound, not silence."""
TRANSCRIPTION_TOPIC = "lk.transcription"
CHAT_TOPIC = "lk.chat"
SYNC_TOPIC = "clara.sync"
NOTICE_TOPIC = "clara.notice"
JOIN_TIMEOUT = 20.0


@dataclass(frozen=True)
class TextStream:
    """One text stream received: its sender, topic, attributes and whole text."""

    sender: str
    topic: str
    attributes: dict[str, str]
    text: str
    at: float

    @property
    def final(self) -> bool:
        return self.attributes.get("lk.transcription_final") == "true"


@dataclass
class HeardAudio:
    """One subscribed agent audio track: when each frame arrived and how loud it was."""

    track_sid: str
    track_name: str
    frames: list[tuple[float, float]] = field(default_factory=list)
    pcm: list[tuple[float, np.ndarray]] = field(default_factory=list)
    """The samples of every frame (int16 mono at ``SAMPLE_RATE``), when the client keeps
    what it hears (``Human(keep_audio=True)``)."""

    def audio_between(self, start: float, end: float) -> np.ndarray:
        """The samples heard from ``start`` to ``end`` (``time.monotonic``)."""
        kept = [x for t, x in self.pcm if start <= t <= end]
        return np.concatenate(kept) if kept else np.zeros(0, np.int16)

    def first_sound(self, after: float = 0.0) -> float | None:
        """When the first frame louder than silence arrived at or after ``after``."""
        return next((t for t, rms in self.frames if t >= after and rms > SOUND_RMS), None)

    def loudest(self) -> float:
        return max((rms for _, rms in self.frames), default=0.0)


@dataclass
class Utterance:
    """Speech the microphone is sending; ``ended_at`` is set when its last voiced sample
    left the microphone (loop time, ``time.monotonic`` based)."""

    frames: list[rtc.AudioFrame]
    voiced_end_frame: int
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    ended_at: float | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class Human:
    """One person's client in a room of the real server."""

    def __init__(
        self,
        server: LiveKitServer,
        room: str,
        identity: str,
        *,
        session_type: str | None = None,
        attributes: dict[str, str] | None = None,
        auto_subscribe: bool = True,
        can_update_own_metadata: bool | None = None,
        agent_name: str | None = AGENT_NAME,
        keep_audio: bool = False,
    ) -> None:
        self.server = server
        self.can_update_own_metadata = can_update_own_metadata
        self.agent_name = agent_name
        self.auto_subscribe = auto_subscribe
        self.keep_audio = keep_audio
        self.room_name = room
        self.identity = identity
        self.attributes = dict(attributes or {})
        if session_type is not None:
            self.attributes["clara.session_type"] = session_type
        self.room = rtc.Room()
        self.streams: list[TextStream] = []
        self.sync_events: list[dict[str, Any]] = []
        self.notices: list[dict[str, Any]] = []
        """The ``clara.notice`` packets the agent sent this participant."""
        self.heard: dict[str, HeardAudio] = {}
        self.subscriptions: list[str] = []
        """The sid of every agent audio track this client got subscribed to, in order."""
        self.unsubscriptions: list[str] = []
        self.agent_attribute_changes: list[dict[str, str]] = []
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._mic_source: rtc.AudioSource | None = None
        self._mic_atask: asyncio.Task[None] | None = None
        self._speech: asyncio.Queue[Utterance] = asyncio.Queue()
        self.mic_publication: rtc.LocalTrackPublication | None = None
        self._wire()

    # -- joining and leaving --------------------------------------------------------------

    async def join(self, *, microphone: bool = True, wait_agent: bool = True) -> None:
        """Connect (with auto-subscribe unless told otherwise, as apps do), publish the
        microphone, wait for the agent participant."""
        token = self.server.token(
            self.identity,
            self.room_name,
            attributes=self.attributes,
            can_update_own_metadata=self.can_update_own_metadata,
            agent_name=self.agent_name,
        )
        options = rtc.RoomOptions(auto_subscribe=self.auto_subscribe)
        await self.room.connect(self.server.url, token, options)
        for topic in (TRANSCRIPTION_TOPIC, CHAT_TOPIC):
            self.room.register_text_stream_handler(topic, self._on_text_stream)
        if microphone:
            await self.publish_microphone()
        if wait_agent:
            await self.wait_until(lambda: self.agent, "the agent joined", timeout=JOIN_TIMEOUT)

    async def publish_microphone(self) -> None:
        self._mic_source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", self._mic_source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        self.mic_publication = await self.room.local_participant.publish_track(track, options)
        self._mic_atask = asyncio.create_task(self._microphone(), name=f"mic.{self.identity}")

    async def leave(self) -> None:
        """Leave on purpose (a client-initiated disconnect) and stop everything."""
        if self._mic_atask is not None:
            self._mic_atask.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mic_atask
            self._mic_atask = None
        await self.room.disconnect()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._mic_source is not None:
            await self._mic_source.aclose()
            self._mic_source = None

    # -- what the person does -------------------------------------------------------------

    def say(self, text: str | Path, *, trailing_silence: float = 0.0) -> Utterance:
        """Speak ``text`` (espeak-ng) or a WAV file into the microphone, in real time."""
        wav = text if isinstance(text, Path) else speech_wav(text)
        frames = load_frames(
            wav,
            sample_rate=SAMPLE_RATE,
            frame_ms=FRAME_MS,
            leading_silence=0.0,
            trailing_silence=trailing_silence,
        )
        _, voiced_end = voiced_span(frames)
        utterance = Utterance(frames, voiced_end_frame=int(voiced_end * 1000) // FRAME_MS)
        self._speech.put_nowait(utterance)
        return utterance

    async def rpc(self, method: str, payload: str = "", *, timeout: float = 10.0) -> str:
        """Call ``method`` on the agent participant; its response (RpcError on refusal)."""
        agent = self.agent
        assert agent is not None, "no agent in the room"
        return await self.room.local_participant.perform_rpc(
            destination_identity=agent.identity,
            method=method,
            payload=payload,
            response_timeout=timeout,
        )

    async def chat(self, text: str) -> None:
        await self.room.local_participant.send_text(text, topic=CHAT_TOPIC)

    async def set_attributes(self, attributes: dict[str, str]) -> None:
        await self.room.local_participant.set_attributes(attributes)

    # -- what the person receives ---------------------------------------------------------

    @property
    def agent(self) -> rtc.RemoteParticipant | None:
        return next(
            (
                p
                for p in self.room.remote_participants.values()
                if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
            ),
            None,
        )

    def transcripts(self, *, sender: str | None = None, final: bool = True) -> list[TextStream]:
        """The ``lk.transcription`` streams received (final ones by default)."""
        return [
            s
            for s in self.streams
            if s.topic == TRANSCRIPTION_TOPIC
            and (sender is None or s.sender == sender)
            and (s.final or not final)
        ]

    def agent_transcripts(self) -> list[TextStream]:
        agent = self.agent
        return [] if agent is None else self.transcripts(sender=agent.identity)

    def user_transcripts(self, identity: str | None = None) -> list[TextStream]:
        return self.transcripts(sender=identity or self.identity)

    def agent_sound_after(self, after: float) -> float | None:
        """When agent audio louder than silence first arrived at or after ``after``."""
        times = [t for h in self.heard.values() if (t := h.first_sound(after)) is not None]
        return min(times, default=None)

    def session_config(self) -> dict[str, Any] | None:
        """The agent's ``clara.session.<identity>`` attribute, parsed."""
        agent = self.agent
        raw = None if agent is None else agent.attributes.get(f"clara.session.{self.identity}")
        return None if not raw else json.loads(raw)

    async def wait_until(
        self, predicate: Callable[[], T | None], what: str, *, timeout: float = 15.0
    ) -> T:
        """Wait until ``predicate()`` is truthy (re-checked on every recorded event)."""

        def check() -> T | None:
            return predicate() or None

        try:
            async with self._changed:
                result = await asyncio.wait_for(self._changed.wait_for(check), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.identity}: {what} did not happen in {timeout}s") from None
        assert result is not None
        return result

    async def notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- room events ----------------------------------------------------------------------

    def _wire(self) -> None:
        room = self.room
        room.on("track_subscribed", self._on_track_subscribed)
        room.on("track_unsubscribed", self._on_track_unsubscribed)
        room.on("data_received", self._on_data)
        room.on("participant_attributes_changed", self._on_attributes)
        for event in (
            "participant_connected",
            "participant_disconnected",
            "track_published",
            "track_unpublished",
            "disconnected",
        ):
            room.on(event, self._poke)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=f"{self.identity}.{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _poke(self, *_: Any) -> None:
        self._spawn(self.notify(), "notify")

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if (
            participant.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
            or track.kind != rtc.TrackKind.KIND_AUDIO
        ):
            self._poke()  # another person's track: waiters may be watching for it
            return
        self.subscriptions.append(publication.sid)
        heard = self.heard[publication.sid] = HeardAudio(publication.sid, publication.name)
        self._spawn(self._listen(track, heard), f"listen.{publication.sid}")

    def _on_track_unsubscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            self.unsubscriptions.append(publication.sid)
        self._poke()

    async def _listen(self, track: rtc.Track, heard: HeardAudio) -> None:
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        try:
            async for event in stream:
                pcm = np.frombuffer(event.frame.data, dtype=np.int16)
                samples = pcm.astype(np.float64)
                rms = float(np.sqrt(np.mean(samples**2)) / 32768.0) if samples.size else 0.0
                heard.frames.append((time.monotonic(), rms))
                if self.keep_audio:
                    heard.pcm.append((time.monotonic(), pcm.copy()))
                if rms > SOUND_RMS:
                    await self.notify()
        finally:
            await stream.aclose()

    def _on_data(self, packet: rtc.DataPacket) -> None:
        received = {SYNC_TOPIC: self.sync_events, NOTICE_TOPIC: self.notices}.get(packet.topic)
        if received is not None:
            with contextlib.suppress(ValueError):
                received.append(json.loads(packet.data))
        self._poke()

    def _on_attributes(self, changed: dict[str, str], participant: rtc.Participant) -> None:
        if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            self.agent_attribute_changes.append(dict(changed))
        self._poke()

    def _on_text_stream(self, reader: rtc.TextStreamReader, sender: str) -> None:
        self._spawn(self._read_text(reader, sender), "text")

    async def _read_text(self, reader: rtc.TextStreamReader, sender: str) -> None:
        try:
            text = await reader.read_all()
        except rtc.StreamError:
            return  # cut short: the client left (or the sender aborted it) while it came
        info = reader.info
        self.streams.append(
            TextStream(sender, info.topic, dict(info.attributes or {}), text, time.monotonic())
        )
        await self.notify()

    # -- the microphone -------------------------------------------------------------------

    async def _microphone(self) -> None:
        """20 ms frames on the loop clock: queued speech, else silence (a live microphone)."""
        source = self._mic_source
        assert source is not None
        loop = asyncio.get_running_loop()
        silence = rtc.AudioFrame.create(SAMPLE_RATE, 1, FRAME_SAMPLES)
        next_at = loop.time()
        current: Utterance | None = None
        index = 0
        while True:
            if current is None and not self._speech.empty():
                current, index = self._speech.get_nowait(), 0
            frame = silence if current is None else current.frames[index]
            await source.capture_frame(frame)
            if current is not None:
                last = index in (current.voiced_end_frame, len(current.frames) - 1)
                if last and not current.ended.is_set():
                    current.ended_at = time.monotonic() + source.queued_duration
                    current.ended.set()
                    await self.notify()
                index += 1
                if index >= len(current.frames):
                    current.finished.set()
                    current = None
                    await self.notify()
            next_at += FRAME_MS / 1000
            await asyncio.sleep(max(0.0, next_at - loop.time()))
