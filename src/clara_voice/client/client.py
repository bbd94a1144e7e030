"""A smoke-test client for a live deployment: the client side of seed 001.

``python -m clara_voice.client --room NAME --wav hello.wav`` joins a room as Clara's app
does, speaks the WAV as its microphone in real time, records the agent's reply and prints
the voice-to-voice latency (end of our speech → first voiced frame of the agent's audio).

It prints its connection state as it changes (``connecting``, ``connected``,
``reconnecting``, ``failed``, ``disconnected``) and recovers from network trouble as the app
must (see :mod:`clara_voice._client_connection`): retries after 1, 2, 4, 8 and 16 s, then
``failed`` with the seed's message and exit code 1. The audio side (WAV microphone,
recording, latency arithmetic) is :mod:`clara_voice._client_audio`; one microphone source
and one recording span every reconnection.

Exit codes: 0 done, 1 connection lost for good, 2 bad settings or arguments, 3 the agent
never answered within ``--timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from livekit import rtc
from livekit.agents.utils import aio

from clara_voice.client.audio import (
    DEFAULT_THRESHOLD_DBFS,
    LatencyMeter,
    Microphone,
    Recorder,
    open_agent_audio,
    voice_to_voice_latency,
)
from clara_voice.client.connection import (
    CONNECTION_LOST_MESSAGE,
    ClientState,
    ClientStateChanged,
    ConnectFailed,
    Connection,
    RoomLike,
)
from clara_voice.logging import get_logger
from clara_voice.tokens import mint_token
from clara_voice.voice.routing import RPC_END_TURN, RPC_START_TURN

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_REPLY = 0, 1, 2, 3

_PTT_TAIL = 0.3  # silence sent before end_turn, so the queued end of the speech is heard
_log = get_logger("clara_voice.client")


@dataclass(frozen=True)
class ClientResult:
    """How a :meth:`VoiceClient.run` ended."""

    state: ClientState | None
    latency: float | None
    spoke: bool
    agent_heard: bool
    """An agent's audio track was subscribed."""
    reconnections: int
    recorded: Path | None

    @property
    def exit_code(self) -> int:
        if self.state == "failed":
            return EXIT_FAILED
        return EXIT_NO_REPLY if self.spoke and self.latency is None else EXIT_OK


class VoiceClient(rtc.EventEmitter[Literal["connection_state_changed"]]):
    """A participant that speaks ``speech``, records the agent and keeps reconnecting.

    ``speech`` are the frames to say (``None``: connect and stay until ``timeout``), said
    once the agent's audio track is subscribed; ``timeout`` bounds the conversation once
    connected. It emits ``connection_state_changed`` (:class:`ClientStateChanged`).
    ``room_factory``, ``sleep``, ``base_delay``, ``max_attempts`` and ``connect_timeout``
    go to :class:`~clara_voice._client_connection.Connection`.
    """

    def __init__(
        self,
        *,
        url: str,
        token: str,
        speech: Sequence[rtc.AudioFrame] | None = None,
        record: Path | None = None,
        push_to_talk: bool = False,
        timeout: float | None = 30.0,
        room_factory: Callable[[], RoomLike] = rtc.Room,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        base_delay: float = 1.0,
        max_attempts: int = 5,
        connect_timeout: float = 10.0,
        lead_in: float = 1.0,
        reply_silence: float = 1.5,
        threshold_dbfs: float = DEFAULT_THRESHOLD_DBFS,
        open_audio: Callable[[rtc.Track], AsyncIterator[rtc.AudioFrame]] = open_agent_audio,
    ) -> None:
        super().__init__()
        self.connection = Connection(
            url=url,
            token=token,
            on_state=self._on_state,
            on_joined=self._publish_microphone,
            handlers={"track_subscribed": self._on_track_subscribed},
            room_factory=room_factory,
            sleep=sleep,
            base_delay=base_delay,
            max_attempts=max_attempts,
            connect_timeout=connect_timeout,
        )
        self.meter = LatencyMeter(threshold_dbfs=threshold_dbfs)
        self.speech_sent = asyncio.Event()
        self.agent_identity: str | None = None
        self._speech = list(speech) if speech else None
        self._record, self._ptt, self._timeout = record, push_to_talk, timeout
        self._lead_in, self._reply_silence = lead_in, reply_silence
        self._open_audio = open_audio
        self._ended = asyncio.Event()  # run() may finish: talk over, or connection over
        self._agent_ready = asyncio.Event()
        self._source: rtc.AudioSource | None = None
        self._mic: Microphone | None = None
        self._recorder: Recorder | None = None
        self._recorder_atask: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = self._closed = False

    @property
    def state(self) -> ClientState | None:
        return self.connection.state

    async def start(self) -> None:
        """Open the recording and the microphone, then connect (in the background)."""
        if self._started or self._closed:
            return
        self._started = True
        self._recorder = Recorder(self.meter, self._record, reply_silence=self._reply_silence)
        if self._speech:
            first = self._speech[0]
            self._source = rtc.AudioSource(first.sample_rate, first.num_channels, 200)
            self._mic = Microphone(self._source, self.meter)
        await self.connection.start()
        self._spawn(self._converse(), "conversation")

    async def run(self) -> ClientResult:
        """Start, talk until done (or failed, or timed out), leave; how it went."""
        try:
            await self.start()
            await self._ended.wait()
            if self.state == "reconnecting":  # let the outage end one way or the other
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.connection.retry_budget):
                        await self.connection.settled.wait()
        finally:
            await self.aclose()
        return self.result()

    def result(self) -> ClientResult:
        return ClientResult(
            state=self.state,
            latency=self.meter.latency,
            spoke=self._speech is not None,
            agent_heard=self._agent_ready.is_set(),
            reconnections=self.connection.reconnections,
            recorded=self._record,
        )

    async def aclose(self) -> None:
        """Leave the room and close everything, in reverse order; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await aio.cancel_and_wait(*self._tasks)
        await self.connection.aclose()
        failures: list[Exception] = []
        if self._source is not None:
            try:
                await self._source.aclose()
            except Exception as exc:
                failures.append(exc)
        if self._recorder is not None:
            try:
                self._recorder.close()
            except Exception as exc:
                failures.append(exc)
        for failure in failures:
            _log.error("error while closing the client", exc_info=failure)

    async def __aenter__(self) -> VoiceClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the room ------------------------------------------------------------------------

    def _on_state(self, change: ClientStateChanged) -> None:
        if change.state in ("failed", "disconnected"):
            self._ended.set()
        self.emit("connection_state_changed", change)

    async def _publish_microphone(self, room: RoomLike) -> None:
        if self._source is None:
            return
        track = rtc.LocalAudioTrack.create_audio_track("microphone", self._source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await room.local_participant.publish_track(track, options)

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if self._recorder is None or self._closed or track.kind != rtc.TrackKind.KIND_AUDIO:
            return
        if participant.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            return
        self.agent_identity = participant.identity
        if self._recorder_atask is not None:
            self._recorder_atask.cancel()  # that track is gone: the new one replaces it
        recording = self._recorder.consume(self._open_audio(track))
        self._recorder_atask = self._spawn(recording, "recorder")
        self._agent_ready.set()

    # -- the conversation ----------------------------------------------------------------

    async def _converse(self) -> None:
        await self.connection.connected.wait()
        try:
            async with asyncio.timeout(self._timeout):
                if self._mic is None or self._speech is None or self._recorder is None:
                    await asyncio.get_running_loop().create_future()  # stay until the timeout
                    return
                await self._agent_ready.wait()
                await self._speak(self._mic, self._speech)
                await self._recorder.reply_finished.wait()
        except TimeoutError:
            if self._speech is not None and self.meter.latency is None:
                what = "reply" if self._agent_ready.is_set() else "audio track"
                _log.warning(f"no {what} from the agent", extra={"timeout": self._timeout})
        finally:
            self._ended.set()

    async def _speak(self, mic: Microphone, speech: list[rtc.AudioFrame]) -> None:
        await mic.push(mic.silence(self._lead_in))
        if self._ptt:
            await self._call_agent(RPC_START_TURN)
        await mic.push(speech)
        if self._ptt:
            await mic.push(mic.silence(_PTT_TAIL))
            await self._call_agent(RPC_END_TURN)
        self.speech_sent.set()
        self._spawn(mic.keep_silent(), "microphone")

    async def _call_agent(self, method: str) -> None:
        room, agent = self.connection.room, self.agent_identity
        if room is None or agent is None:
            _log.warning("push-to-talk call skipped: not connected", extra={"method": method})
            return
        try:
            await room.local_participant.perform_rpc(
                destination_identity=agent, method=method, payload="", response_timeout=5.0
            )
        except Exception as exc:
            _log.warning("push-to-talk call failed", extra={"method": method}, exc_info=exc)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"clara_voice.client.{name}")
        self._tasks.add(task)
        task.add_done_callback(self._on_task_done)
        return task

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.error("client task failed", extra={"task": task.get_name()}, exc_info=exc)
            self._ended.set()


__all__ = [
    "CONNECTION_LOST_MESSAGE",
    "ClientResult",
    "ClientState",
    "ClientStateChanged",
    "ConnectFailed",
    "RoomLike",
    "VoiceClient",
    "mint_token",
    "voice_to_voice_latency",
]
