"""The smoke-test client (clara_voice.client): states, backoff, token, latency, CLI.

Rooms are :class:`testkit.fakes.FakeRoom` s made by a factory the client is given (one per
connect, as with ``rtc.Room``); backoff sleeps are recorded and return at once.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from livekit import api, rtc

from clara_voice.client import client as client_module
from clara_voice.client.audio import LatencyMeter, Recorder, level_dbfs
from clara_voice.client.cli import main
from clara_voice.client.client import (
    CONNECTION_LOST_MESSAGE,
    ClientStateChanged,
    VoiceClient,
    mint_token,
    voice_to_voice_latency,
)
from clara_voice.states import SESSION_TYPE_ATTRIBUTE
from clara_voice.voice.routing import RPC_END_TURN, RPC_START_TURN
from testkit.fakes import FakeLocalParticipant, FakeRoom, make_participant

URL = "wss://clara.example"
TOKEN = "token"
RATE = 48_000
WAIT = 5.0  # bound of every wait: a failing test fails fast, a passing one never waits it


# -- kit -----------------------------------------------------------------------------------


class ClientParticipant(FakeLocalParticipant):
    """The client's own participant: records what it publishes and the RPCs it performs."""

    def __init__(self) -> None:
        super().__init__("clara-smoke")
        self.published: list[tuple[Any, rtc.TrackPublishOptions]] = []
        self.rpc_calls: list[tuple[str, str]] = []

    async def publish_track(self, track: Any, options: rtc.TrackPublishOptions) -> Any:
        self.published.append((track, options))
        return SimpleNamespace(sid=f"TR_{len(self.published)}")

    async def perform_rpc(
        self,
        *,
        destination_identity: str,
        method: str,
        payload: str,
        response_timeout: float | None = None,
    ) -> str:
        self.rpc_calls.append((destination_identity, method))
        return "{}"


class ClientRoom(FakeRoom):
    """A FakeRoom whose connects follow the script of the :class:`Rooms` that made it."""

    def __init__(self, rooms: Rooms) -> None:
        super().__init__("smoke")
        self.local_participant = ClientParticipant()  # type: ignore[assignment]
        self._rooms = rooms

    async def connect(self, url: str, token: str, options: Any = None) -> None:
        rooms = self._rooms
        rooms.in_flight += 1
        rooms.max_in_flight = max(rooms.max_in_flight, rooms.in_flight)
        try:
            rooms.connecting.set()
            if rooms.gate is not None:
                await rooms.gate.wait()
            self.connect_error = rooms.outcomes.pop(0) if rooms.outcomes else None
            await super().connect(url, token, options)
        finally:
            rooms.in_flight -= 1

    def lose_connection(self, reason: int = rtc.DisconnectReason.SIGNAL_CLOSE) -> None:
        """The network drops: what rtc.Room emits when the SDK gives up on the link."""
        self.connected = False
        self.emit("connection_state_changed", rtc.ConnectionState.CONN_DISCONNECTED)
        self.emit("disconnected", reason)

    def resume(self) -> None:
        """livekit's own resume, started and finished."""
        self.emit("connection_state_changed", rtc.ConnectionState.CONN_RECONNECTING)
        self.emit("reconnecting")
        self.emit("connection_state_changed", rtc.ConnectionState.CONN_CONNECTED)
        self.emit("reconnected")


class Rooms:
    """The client's ``room_factory``: scripted connect outcomes, in-flight connect count."""

    def __init__(self) -> None:
        self.made: list[ClientRoom] = []
        self.outcomes: list[Exception | None] = []
        self.gate: asyncio.Event | None = None
        self.connecting = asyncio.Event()
        self.in_flight = 0
        self.max_in_flight = 0

    def __call__(self) -> ClientRoom:
        room = ClientRoom(self)
        self.made.append(room)
        return room

    @property
    def connects(self) -> int:
        return sum(len(room.connect_calls) for room in self.made)

    def fail(self, count: int) -> None:
        self.outcomes += [rtc.ConnectError("failed to connect: network unreachable")] * count


class Sleeps:
    """The client's ``sleep``: records the delays asked for, returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


class States:
    """Every ``connection_state_changed`` of a client; waits for one."""

    def __init__(self, client: VoiceClient) -> None:
        self.changes: list[ClientStateChanged] = []
        self._changed = asyncio.Event()
        client.on("connection_state_changed", self._on_change)

    def _on_change(self, change: ClientStateChanged) -> None:
        self.changes.append(change)
        self._changed.set()

    @property
    def states(self) -> list[str]:
        return [change.state for change in self.changes]

    async def wait_for(self, state: str, *, count: int = 1) -> None:
        async with asyncio.timeout(WAIT):
            while self.states.count(state) < count:
                self._changed.clear()
                await self._changed.wait()


def make_client(rooms: Rooms, sleeps: Sleeps, **kwargs: Any) -> VoiceClient:
    kwargs.setdefault("timeout", None)
    return VoiceClient(url=URL, token=TOKEN, room_factory=rooms, sleep=sleeps, **kwargs)


def assert_nothing_left(client: VoiceClient, rooms: Rooms) -> None:
    assert not client._tasks
    supervisor = client.connection._supervisor_atask
    assert supervisor is None or supervisor.done()
    assert all(room.listener_count() == 0 for room in rooms.made)
    assert not any(room.connected for room in rooms.made)


@pytest.fixture
def rooms() -> Rooms:
    return Rooms()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


# -- connection states and reconnection -----------------------------------------------------


async def test_clean_connect_and_disconnect(rooms: Rooms, sleeps: Sleeps) -> None:
    client = make_client(rooms, sleeps)
    states = States(client)
    await client.start()
    await states.wait_for("connected")
    assert rooms.made[0].connect_calls == [(URL, TOKEN)]

    await client.aclose()
    await client.aclose()  # safe twice

    assert states.states == ["connecting", "connected", "disconnected"]
    assert sleeps.delays == []
    assert client.result().exit_code == 0
    assert_nothing_left(client, rooms)


async def test_run_without_speech_stays_until_the_timeout(rooms: Rooms, sleeps: Sleeps) -> None:
    client = make_client(rooms, sleeps, timeout=0.05)
    states = States(client)

    async with asyncio.timeout(WAIT):
        result = await client.run()

    assert states.states == ["connecting", "connected", "disconnected"]
    assert (result.state, result.latency, result.exit_code) == ("disconnected", None, 0)
    assert_nothing_left(client, rooms)


async def test_unexpected_disconnect_reconnects_on_the_third_attempt(
    rooms: Rooms, sleeps: Sleeps
) -> None:
    client = make_client(rooms, sleeps)
    states = States(client)
    await client.start()
    await states.wait_for("connected")
    rooms.fail(2)

    rooms.made[0].lose_connection(rtc.DisconnectReason.SIGNAL_CLOSE)
    await states.wait_for("connected", count=2)

    assert sleeps.delays == [1, 2, 4]
    assert states.states == ["connecting", "connected", "reconnecting", "connected"]
    assert states.changes[2].reason == "signal_close"
    assert client.connection.reconnect_attempts == 0
    assert client.connection.reconnections == 1
    assert rooms.connects == 4
    assert client.connection.room is rooms.made[3]
    assert all(room.listener_count() == 0 for room in rooms.made[:3])  # dropped rooms

    # the counter was reset: the next outage starts again at 1 s
    rooms.made[3].lose_connection(rtc.DisconnectReason.CONNECTION_TIMEOUT)
    await states.wait_for("connected", count=3)
    assert sleeps.delays == [1, 2, 4, 1]

    await client.aclose()
    assert_nothing_left(client, rooms)


async def test_every_attempt_failing_ends_in_failed(rooms: Rooms, sleeps: Sleeps) -> None:
    client = make_client(rooms, sleeps)
    states = States(client)
    await client.start()
    await states.wait_for("connected")
    rooms.fail(10)

    rooms.made[0].lose_connection()
    await states.wait_for("failed")

    assert sleeps.delays == [1, 2, 4, 8, 16]
    assert rooms.connects == 1 + 5
    assert client.connection.reconnect_attempts == 5
    assert states.states == ["connecting", "connected", "reconnecting", "failed"]
    assert states.changes[-1].message == CONNECTION_LOST_MESSAGE
    assert CONNECTION_LOST_MESSAGE == (
        "Connection lost. Please check your internet and try starting a new session."
    )

    await client.aclose()
    assert states.states[-1] == "failed"  # final: closing does not turn it into disconnected
    assert client.result().exit_code != 0
    assert_nothing_left(client, rooms)


async def test_a_failed_first_connect_is_retried_and_run_exits_non_zero(
    rooms: Rooms, sleeps: Sleeps
) -> None:
    client = make_client(rooms, sleeps)
    states = States(client)
    rooms.fail(6)

    async with asyncio.timeout(WAIT):
        result = await client.run()

    assert states.states == ["connecting", "reconnecting", "failed"]
    assert sleeps.delays == [1, 2, 4, 8, 16]
    assert rooms.connects == 6
    assert states.changes[-1].message == CONNECTION_LOST_MESSAGE
    assert "network unreachable" in (states.changes[-1].reason or "")
    assert result.state == "failed"
    assert result.exit_code == 1
    assert_nothing_left(client, rooms)


async def test_backoff_is_configurable(rooms: Rooms, sleeps: Sleeps) -> None:
    client = make_client(rooms, sleeps, base_delay=0.5, max_attempts=2)
    states = States(client)
    rooms.fail(3)
    await client.start()
    await states.wait_for("failed")
    assert sleeps.delays == [0.5, 1.0]
    await client.aclose()


async def test_disconnect_events_during_a_reconnect_never_start_a_second_connect(
    rooms: Rooms, sleeps: Sleeps
) -> None:
    """The seed warns of races: one connect at a time, however many events arrive."""
    client = make_client(rooms, sleeps)
    states = States(client)
    await client.start()
    await states.wait_for("connected")

    rooms.gate = asyncio.Event()
    rooms.connecting.clear()
    old = rooms.made[0]
    for _ in range(3):  # the same loss reported several times
        old.lose_connection()
    async with asyncio.timeout(WAIT):
        await rooms.connecting.wait()  # the reconnect's connect is now held

    for _ in range(3):  # more events from the dropped room while it is held
        old.lose_connection(rtc.DisconnectReason.CONNECTION_TIMEOUT)
        old.emit("reconnected")
    assert rooms.in_flight == 1
    assert len(rooms.made) == 2

    rooms.gate.set()
    await states.wait_for("connected", count=2)

    assert rooms.max_in_flight == 1
    assert rooms.connects == 2
    assert sleeps.delays == [1]
    assert states.states == ["connecting", "connected", "reconnecting", "connected"]
    await client.aclose()
    assert_nothing_left(client, rooms)


async def test_aclose_during_a_held_reconnect_stops_it(rooms: Rooms, sleeps: Sleeps) -> None:
    client = make_client(rooms, sleeps)
    states = States(client)
    await client.start()
    await states.wait_for("connected")
    rooms.gate = asyncio.Event()
    rooms.connecting.clear()
    rooms.made[0].lose_connection()
    async with asyncio.timeout(WAIT):
        await rooms.connecting.wait()

    await client.aclose()

    assert states.states == ["connecting", "connected", "reconnecting", "disconnected"]
    assert rooms.in_flight == 0
    assert_nothing_left(client, rooms)


async def test_run_lets_a_reconnection_under_way_finish(rooms: Rooms, sleeps: Sleeps) -> None:
    """The conversation's timeout falling in an outage waits for the outage's outcome."""
    client = make_client(rooms, sleeps, timeout=0.05)
    states = States(client)
    async with asyncio.timeout(WAIT):
        run = asyncio.create_task(client.run())
        await states.wait_for("connected")
        rooms.gate = asyncio.Event()
        rooms.connecting.clear()
        rooms.made[0].lose_connection()
        await rooms.connecting.wait()
        await client._ended.wait()  # the conversation is over, the reconnect still held
        await asyncio.sleep(0)
        assert not run.done()

        rooms.gate.set()
        result = await run

    assert states.states == ["connecting", "connected", "reconnecting", "connected", "disconnected"]
    assert result.exit_code == 0
    assert_nothing_left(client, rooms)


async def test_livekit_resume_is_reported_without_retries_of_ours(
    rooms: Rooms, sleeps: Sleeps
) -> None:
    client = make_client(rooms, sleeps)
    states = States(client)
    await client.start()
    await states.wait_for("connected")
    room = rooms.made[0]

    room.resume()

    assert states.states == ["connecting", "connected", "reconnecting", "connected"]
    assert states.changes[2].reason == "resuming"
    assert sleeps.delays == []
    assert len(rooms.made) == 1

    # a resume that gives up ends in a disconnect: then our own retries take over
    room.emit("reconnecting")
    room.lose_connection()
    await states.wait_for("connected", count=3)
    assert sleeps.delays == [1]
    assert len(rooms.made) == 2
    assert states.states[-2:] == ["reconnecting", "connected"]
    await client.aclose()
    assert_nothing_left(client, rooms)


async def test_a_client_initiated_disconnect_is_not_retried(rooms: Rooms, sleeps: Sleeps) -> None:
    client = make_client(rooms, sleeps)
    states = States(client)
    async with asyncio.timeout(WAIT):
        run = asyncio.create_task(client.run())
        await states.wait_for("connected")
        rooms.made[0].lose_connection(rtc.DisconnectReason.CLIENT_INITIATED)
        result = await run

    assert states.states == ["connecting", "connected", "disconnected"]
    assert sleeps.delays == []
    assert result.exit_code == 0


# -- the token -------------------------------------------------------------------------------


def test_the_token_carries_identity_room_grant_and_session_type() -> None:
    secret = "s" * 40
    token = mint_token(
        api_key="smoke-key",
        api_secret=secret,
        room="clara-room",
        identity="smoke-1",
        session_type="voice-ptt",
    )

    claims = api.TokenVerifier("smoke-key", secret).verify(token)

    assert claims.identity == "smoke-1"
    assert claims.video is not None
    assert claims.video.room_join is True
    assert claims.video.room == "clara-room"
    assert claims.attributes == {SESSION_TYPE_ATTRIBUTE: "voice-ptt"}

    plain = api.TokenVerifier("smoke-key", secret).verify(
        mint_token(api_key="smoke-key", api_secret=secret, room="r", identity="i")
    )
    assert not plain.attributes


# -- audio and latency -----------------------------------------------------------------------


def tone(seconds: float = 0.01, *, amplitude: float = 0.5) -> rtc.AudioFrame:
    n = round(RATE * seconds)
    t = np.arange(n) / RATE
    samples = (amplitude * 32767 * np.sin(2 * math.pi * 440 * t)).astype(np.int16)
    return rtc.AudioFrame(samples.tobytes(), RATE, 1, n)


def silence(seconds: float = 0.01) -> rtc.AudioFrame:
    return rtc.AudioFrame.create(RATE, 1, round(RATE * seconds))


def timed(frames: list[rtc.AudioFrame], start: float = 0.0) -> list[tuple[float, rtc.AudioFrame]]:
    out, at = [], start
    for frame in frames:
        out.append((at, frame))
        at += frame.duration
    return out


def test_levels() -> None:
    assert level_dbfs(silence()) == -math.inf
    assert level_dbfs(tone(amplitude=1.0)) == pytest.approx(-3.0, abs=0.1)
    assert level_dbfs(tone(amplitude=0.001)) < -45  # quiet noise is not speech


def test_latency_from_the_last_voiced_frame_to_the_first_voiced_reply() -> None:
    # 50 ms silence, 100 ms speech (last voiced frame ends at 0.15 s), 200 ms silence
    sent = timed([silence()] * 5 + [tone()] * 10 + [silence()] * 20)
    received = [
        (0.10, tone()),  # the agent heard while we still spoke: not the reply
        (0.20, tone(amplitude=0.001)),  # below the threshold
        *timed([silence()] * 10, start=0.3),
        (0.80, tone()),  # the reply
        (0.81, tone()),
    ]

    assert voice_to_voice_latency(sent, received) == pytest.approx(0.65)
    assert voice_to_voice_latency(sent, list(reversed(received))) == pytest.approx(0.65)


def test_latency_is_none_without_speech_or_reply() -> None:
    speech = timed([tone()] * 3)
    assert voice_to_voice_latency(timed([silence()] * 3), [(1.0, tone())]) is None
    assert voice_to_voice_latency(speech, [(0.0, tone()), (1.0, silence())]) is None
    assert voice_to_voice_latency(speech, []) is None


async def test_the_recorder_writes_the_agent_audio_and_sees_the_reply(tmp_path: Path) -> None:
    meter = LatencyMeter()
    meter.on_sent(0.0, tone())  # our speech ended long ago (loop time is far later)
    recorder = Recorder(meter, tmp_path / "agent.wav", reply_silence=0.0)
    frames = [silence()] * 3 + [tone()] * 2

    async def agent() -> AsyncIterator[rtc.AudioFrame]:
        for frame in frames:
            yield frame

    await recorder.consume(agent())
    recorder.close()
    recorder.close()

    assert recorder.reply_finished.is_set()
    assert meter.latency is not None and meter.latency > 0
    with wave.open(str(tmp_path / "agent.wav"), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels()) == (RATE, 1)
        assert wav.readframes(wav.getnframes()) == b"".join(f.data.tobytes() for f in frames)


# -- a whole conversation against a fake agent --------------------------------------------------


def agent_voice(client: VoiceClient, *, reply: bool = True) -> Callable[[Any], Any]:
    """The agent's audio: 10 ms frames in real time; after our speech, a short reply."""

    async def frames(track: Any) -> AsyncIterator[rtc.AudioFrame]:
        replied = not reply
        while True:
            if client.speech_sent.is_set() and not replied:
                replied = True
                for frame in [silence()] * 5 + [tone()] * 5:
                    yield frame
                    await asyncio.sleep(0.01)
            yield silence()
            await asyncio.sleep(0.01)

    return frames


async def converse(
    rooms: Rooms, client: VoiceClient, states: States
) -> tuple[client_module.ClientResult, ClientRoom]:
    async with asyncio.timeout(WAIT):
        run = asyncio.create_task(client.run())
        await states.wait_for("connected")
        room = rooms.made[-1]
        track = SimpleNamespace(kind=rtc.TrackKind.KIND_AUDIO, sid="TR_agent")
        person = make_participant("someone-else")
        room.emit("track_subscribed", track, None, person)  # not the agent: ignored
        agent = make_participant("agent-clara", kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT)
        room.emit("track_subscribed", track, None, agent)
        return await run, room


async def test_a_conversation_measures_the_latency_and_records_the_reply(
    rooms: Rooms, sleeps: Sleeps, tmp_path: Path
) -> None:
    record = tmp_path / "agent.wav"
    client = make_client(
        rooms,
        sleeps,
        speech=[silence()] * 3 + [tone()] * 10 + [silence()] * 3,
        record=record,
        timeout=WAIT,
        lead_in=0.0,
        reply_silence=0.03,
    )
    client._open_audio = agent_voice(client)
    states = States(client)

    result, room = await converse(rooms, client, states)

    assert states.states == ["connecting", "connected", "disconnected"]
    assert result.latency is not None and result.latency > 0
    assert result.exit_code == 0
    assert client.agent_identity == "agent-clara"
    [(track, options)] = room.local_participant.published  # type: ignore[attr-defined]
    assert isinstance(track, rtc.LocalAudioTrack)
    assert options.source == rtc.TrackSource.SOURCE_MICROPHONE
    assert room.local_participant.rpc_calls == []  # type: ignore[attr-defined]
    with wave.open(str(record), "rb") as wav:
        assert wav.getnframes() > 0
    assert_nothing_left(client, rooms)


async def test_push_to_talk_starts_and_ends_the_turn(rooms: Rooms, sleeps: Sleeps) -> None:
    client = make_client(
        rooms,
        sleeps,
        speech=[tone()] * 5,
        push_to_talk=True,
        timeout=WAIT,
        lead_in=0.0,
        reply_silence=0.03,
    )
    client._open_audio = agent_voice(client)
    states = States(client)

    result, room = await converse(rooms, client, states)

    assert result.exit_code == 0
    assert room.local_participant.rpc_calls == [  # type: ignore[attr-defined]
        ("agent-clara", RPC_START_TURN),
        ("agent-clara", RPC_END_TURN),
    ]


async def test_no_reply_within_the_timeout_exits_non_zero(rooms: Rooms, sleeps: Sleeps) -> None:
    client = make_client(rooms, sleeps, speech=[tone()] * 5, timeout=0.3, lead_in=0.0)
    client._open_audio = agent_voice(client, reply=False)
    states = States(client)

    result, _ = await converse(rooms, client, states)

    assert result.latency is None
    assert result.exit_code == 3
    assert states.states == ["connecting", "connected", "disconnected"]
    assert_nothing_left(client, rooms)


# -- the command line ------------------------------------------------------------------------


def test_cli_without_livekit_settings_prints_one_clear_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--room", "smoke"]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert "LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET not set" in line


def test_cli_names_only_the_missing_settings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVEKIT_URL", URL)
    monkeypatch.setenv("LIVEKIT_API_KEY", "key")

    assert main(["--room", "smoke"]) == 2

    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("clara_voice.client: LIVEKIT_API_SECRET not set")


def test_cli_rejects_a_wav_it_cannot_publish(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in {
        "LIVEKIT_URL": URL,
        "LIVEKIT_API_KEY": "k",
        "LIVEKIT_API_SECRET": "s",
    }.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "8bit.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(16000)
        wav.writeframes(b"\x80" * 1600)

    assert main(["--room", "smoke", "--wav", str(path)]) == 2

    [line] = capsys.readouterr().err.splitlines()
    assert "only 16-bit PCM" in line


def test_python_m_clara_voice_client_runs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "CLARA_"))}
    done = subprocess.run(
        [sys.executable, "-m", "clara_voice.client", "--room", "smoke"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert "LIVEKIT_URL" in line and "not set" in line
