"""SessionSync (seed 003): configs, validation rules, events, change requests, bad input."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from livekit import rtc

from clara_voice._ratelimit import TokenBucket
from clara_voice.agent.agent import ClaraVoiceAgent
from clara_voice.agent.registry import SessionRegistry
from clara_voice.agent.session import ParticipantSession, new_session_id
from clara_voice.config import Settings
from clara_voice.logging import get_logger
from clara_voice.states import SESSION_TYPE_ATTRIBUTE, ConnectionState, SessionType
from clara_voice.sync.protocol import (
    MAX_REQUEST_BYTES,
    RPC_SET_SESSION_TYPE,
    SESSION_ATTRIBUTE_PREFIX,
    SYNC_TOPIC,
    SessionConfig,
)
from clara_voice.sync.service import SessionSync
from clara_voice.telemetry import ErrorSource
from clara_voice.voice.surface import RoomSurface
from testkit.checks import config_of
from testkit.fakes import FakePipeline, FakePipelineFactory, FakeRoom
from testkit.tasks import other_tasks, settle

LOG = get_logger("clara_voice.test_sync")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RetypablePipeline(FakePipeline):
    """A FakePipeline that can fail to switch."""

    def __init__(
        self,
        identity: str,
        *,
        session_type: SessionType = "voice-vad",
        fail: Exception | None = None,
    ) -> None:
        super().__init__(identity, session_type=session_type)
        self.types: list[str] = self.session_type_calls
        self.fail = fail

    def set_session_type(self, session_type: SessionType) -> None:
        if self.fail is not None:
            raise self.fail
        super().set_session_type(session_type)


class Host:
    """The room job's sessions as SessionSync gets them (the agent's real SessionRegistry),
    with sessions made and moved by hand."""

    def __init__(self, room: FakeRoom) -> None:
        self._room = room
        self.registry = SessionRegistry()
        self.errors: Counter[str] = Counter()
        self.surface = RoomSurface(
            room,  # type: ignore[arg-type]
            log=LOG,
            attribute_interval=0.0,
            on_error=lambda: self.count_error("session"),
        )
        """The room's single owners, as the agent makes them (the attribute writer)."""

    def count_error(self, source: ErrorSource) -> None:
        self.errors[source] += 1

    def add(
        self,
        identity: str,
        *,
        session_type: SessionType = "voice-vad",
        connect: bool = True,
        mic: bool = True,
        pipeline: FakePipeline | None = None,
    ) -> ParticipantSession:
        if identity not in self._room.remote_participants:
            self._room.join(identity)
        if mic:
            self._room.publish_track(identity)
        session = ParticipantSession(
            session_id=new_session_id(identity),
            participant_id=identity,
            participant_sid=self._room.remote_participants[identity].sid,
            log=LOG,
            session_type=session_type,
        )
        session.pipeline = pipeline or RetypablePipeline(identity, session_type=session_type)
        self.registry.add(session)
        if connect:
            self.move(session, "connected", "pipeline started")
        return session

    def move(self, session: ParticipantSession, new: ConnectionState, reason: str) -> None:
        """What the agent does to move a session (a closed one is no longer kept)."""
        if new == "closed":
            self.registry.detach(session.session_id)
        self.registry.transition(session, new, reason=reason)


class HostedSync(SessionSync):
    """SessionSync with the room surface the agent would start before it and close after."""

    def __init__(self, host: Host, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, surface=host.surface, **kwargs)
        self._host = host

    async def start(self) -> None:
        self._host.surface.start()
        await super().start()

    async def aclose(self) -> None:
        await super().aclose()
        await self._host.surface.aclose()


def make_sync(host: Host, settings: Settings, clock: Clock, **kwargs: Any) -> SessionSync:
    return HostedSync(
        host,
        host._room,  # type: ignore[arg-type]
        host.registry,
        settings,
        log=LOG,
        count_error=host.count_error,
        interval=kwargs.pop("interval", 60.0),
        clock=clock,
        **kwargs,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def host(room: FakeRoom) -> Host:
    return Host(room)


@pytest.fixture
async def sync(host: Host, settings: Settings, clock: Clock) -> AsyncIterator[SessionSync]:
    sync = make_sync(host, settings, clock)
    await sync.start()
    yield sync
    await sync.aclose()


async def drain(sync: SessionSync) -> None:
    async with asyncio.timeout(2.0):
        await asyncio.sleep(0)
        await sync.drain()


def events(room: FakeRoom, event_type: str | None = None) -> list[dict[str, Any]]:
    found = []
    for topic, payload, _ in room.local_participant.published:
        assert topic == SYNC_TOPIC
        message = json.loads(payload)
        assert message["v"] == 1
        if event_type is None or message["type"] == event_type:
            found.append(message)
    return found


def attribute(room: FakeRoom, identity: str) -> dict[str, Any] | None:
    value = room.local_participant.attributes.get(SESSION_ATTRIBUTE_PREFIX + identity)
    return None if value is None else json.loads(value)


async def rpc(room: FakeRoom, caller: str, payload: object) -> dict[str, Any]:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return json.loads(await room.local_participant.call_rpc(caller, RPC_SET_SESSION_TYPE, text))


async def rpc_error(room: FakeRoom, caller: str, payload: object) -> str:
    with pytest.raises(rtc.RpcError) as info:
        await rpc(room, caller, payload)
    assert info.value.code == rtc.RpcError.ErrorCode.APPLICATION_ERROR
    data = json.loads(info.value.data or "{}")
    assert data["v"] == 1 and data["message"] == info.value.message
    return str(data["error"])


# -- SessionConfig --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session_type", "turn_detection", "voice_mode", "voice_activity"),
    [
        ("text", "none", None, False),
        ("voice-ptt", "client", "push-to-talk", True),
        ("voice-vad", "server", "continuous", True),
    ],
)
def test_the_type_fixes_turn_detection(
    session_type: SessionType, turn_detection: str, voice_mode: str | None, voice_activity: bool
) -> None:
    config = SessionConfig(type=session_type, room_id="r")
    assert config.turn_detection == turn_detection
    assert config.voice_mode == voice_mode
    assert config.voice_activity_enabled is voice_activity
    assert set(config.to_json()) == {
        "type",
        "state",
        "started_at",
        "voice_mode",
        "is_muted",
        "turn_detection",
        "room_id",
        "last_sync_at",
        "sync_attempts",
        "inconsistency_detected",
        "voice_activity_enabled",
    }


def test_token_bucket_refills(clock: Clock) -> None:
    bucket = TokenBucket(capacity=2, rate=1.0, clock=clock)
    assert bucket.take() and bucket.take() and not bucket.take()
    clock.now += 1.0
    assert bucket.take() and not bucket.take()


# -- lifecycle ------------------------------------------------------------------------------


async def test_start_and_aclose_are_idempotent_and_leave_nothing(
    room: FakeRoom, host: Host, settings: Settings, clock: Clock
) -> None:
    baseline, tasks = room.listener_count(), other_tasks()
    sync = make_sync(host, settings, clock, interval=0.01)
    await sync.start()
    await sync.start()
    assert room.listener_count() > baseline
    assert RPC_SET_SESSION_TYPE in room.local_participant.rpc_handlers
    host.add("alice")
    room.set_attributes("alice", {SESSION_TYPE_ATTRIBUTE: "voice-ptt"})
    await sync.aclose()
    await sync.aclose()
    assert room.listener_count() == baseline
    assert RPC_SET_SESSION_TYPE not in room.local_participant.rpc_handlers
    assert other_tasks() == tasks


async def test_aclose_before_start(host: Host, settings: Settings, clock: Clock) -> None:
    sync = make_sync(host, settings, clock)
    await sync.aclose()
    await sync.start()  # closed for good
    assert config_of(sync, "none") is None


async def test_interval_comes_from_settings(host: Host, settings: Settings, clock: Clock) -> None:
    sync = SessionSync(host._room, host.registry, settings, surface=host.surface, log=LOG)  # type: ignore[arg-type]
    assert sync._interval == getattr(settings, "sync_interval", 5.0)


# -- states and events ----------------------------------------------------------------------


async def test_session_life_is_published(room: FakeRoom, host: Host, sync: SessionSync) -> None:
    session = host.add("alice", connect=False)
    assert config_of(sync, session.session_id).state == "idle"  # type: ignore[union-attr]
    host.move(session, "connected", "pipeline started")
    await drain(sync)
    config = attribute(room, "alice")
    assert config is not None
    assert config["state"] == "active" and config["type"] == "voice-vad"
    assert config["turn_detection"] == "server" and config["started_at"] is not None
    assert config["room_id"] == room.name
    last = events(room)[-1]
    assert last["type"] == "session_state_sync"
    payload = last["payload"]
    assert payload["session_id"] == session.session_id
    assert payload["participant"] == "alice"
    assert payload["trigger"] == "pipeline started"
    assert isinstance(payload["timestamp"], int)
    assert payload["config"] == config
    assert room.local_participant.published[-1][2] == ["alice"]  # the owner only

    host.move(session, "reconnecting", "connection quality poor")
    await drain(sync)
    interruption = events(room, "connection_interruption")[-1]["payload"]
    assert interruption["config"]["state"] == "syncing"
    assert interruption["trigger"] == "connection quality poor"
    assert attribute(room, "alice")["state"] == "syncing"  # type: ignore[index]

    host.move(session, "connected", "connection quality recovered")
    await drain(sync)
    assert events(room)[-1]["payload"]["config"]["state"] == "active"

    host.move(session, "closed", "participant left")
    await drain(sync)
    ending = events(room, "session_state_sync")[-1]["payload"]
    assert ending["config"]["state"] == "ending"
    assert attribute(room, "alice") is None
    assert config_of(sync, session.session_id) is None


async def test_error_state(room: FakeRoom, host: Host, sync: SessionSync) -> None:
    session = host.add("alice")
    host.move(session, "error", "initialization failed")
    await drain(sync)
    assert attribute(room, "alice")["state"] == "error"  # type: ignore[index]


async def test_room_reconnection_holds_publishing(
    room: FakeRoom, host: Host, sync: SessionSync
) -> None:
    session = host.add("alice")
    await drain(sync)
    before = len(room.local_participant.published)
    room.emit("reconnecting")
    host.move(session, "reconnecting", "agent's room connection lost")
    await asyncio.sleep(0.01)
    assert len(room.local_participant.published) == before  # the link is down: it waits
    host.move(session, "connected", "agent's room connection recovered")
    room.emit("reconnected")
    await drain(sync)
    changes = [e["payload"] for e in events(room, "room_state_change")]
    assert [c["room_state"]["connection"] for c in changes] == ["reconnecting", "connected"]
    assert [c["trigger"] for c in changes] == ["room reconnecting", "room connected"]
    assert events(room, "connection_interruption")
    assert attribute(room, "alice")["state"] == "active"  # type: ignore[index]


async def test_publish_failures_are_counted_and_publishing_goes_on(
    room: FakeRoom, host: Host, sync: SessionSync
) -> None:
    room.local_participant.publish_error = RuntimeError("engine closed")
    host.add("alice")
    await drain(sync)
    assert host.errors["session"] >= 2
    room.local_participant.publish_error = None
    host.add("bob")
    await drain(sync)
    assert attribute(room, "bob") is not None


# -- validation rules -------------------------------------------------------------------------


async def test_participant_gone_is_an_error(room: FakeRoom, host: Host, sync: SessionSync) -> None:
    session = host.add("alice")
    room.remote_participants.pop("alice")  # gone without the agent hearing of it
    sync.validate()
    await drain(sync)
    config = config_of(sync, session.session_id)
    assert config is not None and config.state == "error"
    assert config.sync_attempts == 1 and config.inconsistency_detected
    event = events(room, "session_inconsistency")[-1]["payload"]
    assert event["issues"] == ["participant_gone"]
    assert event["room_state"]["participant_present"] is False
    assert event["config"]["state"] == "error"
    assert event["trigger"] == "validation"


async def test_room_disconnected_is_an_error(room: FakeRoom, host: Host, sync: SessionSync) -> None:
    session = host.add("alice")
    room.emit("disconnected", rtc.DisconnectReason.SIGNAL_CLOSE)
    sync.validate()
    config = config_of(sync, session.session_id)
    assert config is not None and config.state == "error"
    assert sync.events_sent["session_inconsistency"] == 1


async def test_error_heals_when_the_participant_is_back(
    room: FakeRoom, host: Host, sync: SessionSync
) -> None:
    session = host.add("alice")
    participant = room.remote_participants.pop("alice")
    sync.validate()
    room.remote_participants["alice"] = participant
    sync.validate()
    config = config_of(sync, session.session_id)
    assert config is not None and config.state == "active" and config.sync_attempts == 2


async def test_room_id_mismatch_is_corrected(room: FakeRoom, host: Host, sync: SessionSync) -> None:
    session = host.add("alice")
    room.name = "moved-room"
    room.emit("moved")
    await drain(sync)
    config = config_of(sync, session.session_id)
    assert config is not None and config.room_id == "moved-room"
    assert config.sync_attempts == 1
    event = events(room, "session_inconsistency")[-1]["payload"]
    assert event["issues"] == ["room_id_mismatch"]
    assert event["trigger"] == "room updated"
    assert event["room_state"]["room_id"] == "moved-room"


async def test_turn_detection_mismatch_is_corrected(host: Host, sync: SessionSync) -> None:
    session = host.add("alice", session_type="voice-ptt")
    config = config_of(sync, session.session_id)
    assert config is not None
    config.turn_detection = "server"
    sync.validate()
    assert config.turn_detection == "client" and config.voice_mode == "push-to-talk"
    assert config.sync_attempts == 1 and config.inconsistency_detected
    sync.validate()  # corrected: nothing more to do
    assert config.sync_attempts == 1 and not config.inconsistency_detected
    assert sync.events_sent["session_inconsistency"] == 1


async def test_type_mismatch_follows_the_pipeline(host: Host, sync: SessionSync) -> None:
    session = host.add("alice")
    session.session_type = "text"
    sync.validate()
    config = config_of(sync, session.session_id)
    assert config is not None and config.type == "text" and config.turn_detection == "none"


async def test_voice_session_without_microphone_is_flagged_once(
    room: FakeRoom, host: Host, sync: SessionSync
) -> None:
    session = host.add("alice", mic=False)
    sync.validate()
    sync.validate()
    await drain(sync)
    flagged = events(room, "session_inconsistency")
    assert len(flagged) == 1
    assert flagged[0]["payload"]["issues"] == ["microphone_absent"]
    config = config_of(sync, session.session_id)
    assert config is not None and config.is_muted is True and config.sync_attempts == 0
    assert config.state == "active"  # flagged, not changed

    room.publish_track("alice")
    await drain(sync)
    assert events(room, "room_state_change")[-1]["payload"]["trigger"] == "track_published"
    assert events(room)[-1]["type"] == "session_state_sync"
    assert not config.inconsistency_detected and config.is_muted is False


async def test_muted_microphone_is_flagged(room: FakeRoom, host: Host, sync: SessionSync) -> None:
    host.add("alice", mic=False)
    publication = room.publish_track("alice")
    room.mute_track("alice", publication.sid)
    await drain(sync)
    muted = events(room, "room_state_change")[-1]["payload"]
    assert muted["trigger"] == "track_muted"
    assert muted["room_state"]["microphone"] == "muted"
    assert events(room, "session_inconsistency")[-1]["payload"]["issues"] == ["microphone_muted"]
    room.mute_track("alice", publication.sid, muted=False)
    room.unpublish_track("alice", publication.sid)
    await drain(sync)
    assert events(room, "room_state_change")[-1]["payload"]["room_state"]["microphone"] == "absent"


async def test_text_session_needs_no_microphone(
    room: FakeRoom, host: Host, sync: SessionSync
) -> None:
    host.add("alice", session_type="text", mic=False)
    room.publish_track("alice", source=rtc.TrackSource.SOURCE_CAMERA)  # not a microphone
    sync.validate()
    assert sync.events_sent["session_inconsistency"] == 0


async def test_validation_runs_periodically(
    room: FakeRoom, host: Host, settings: Settings, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = make_sync(host, settings, clock, interval=0.01)
    validate, ran = sync.validate, asyncio.Event()

    def validate_and_tell(*, trigger: str = "validation") -> None:
        validate(trigger=trigger)
        ran.set()

    monkeypatch.setattr(sync, "validate", validate_and_tell)
    async with sync:
        session = host.add("alice")
        room.remote_participants.pop("alice")
        ran.clear()
        async with asyncio.timeout(2.0):
            await ran.wait()
        assert config_of(sync, session.session_id).state == "error"  # type: ignore[union-attr]
    assert sync.events_sent["session_inconsistency"] == 1


async def test_an_unchanged_config_is_not_written_again(
    room: FakeRoom, host: Host, settings: Settings, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: every validation round wrote the same ``clara.session.<identity>`` attribute
    again (4 identical writes in 2 s were measured against a real server)."""
    sync = make_sync(host, settings, clock, interval=0.01)
    validate, rounds = sync.validate, asyncio.Queue[None]()

    def validate_and_count(*, trigger: str = "validation") -> None:
        validate(trigger=trigger)
        rounds.put_nowait(None)

    monkeypatch.setattr(sync, "validate", validate_and_count)
    key = SESSION_ATTRIBUTE_PREFIX + "alice"

    async def writes_after(count: int) -> list[str]:
        async with asyncio.timeout(5.0):
            for _ in range(count):
                await rounds.get()
                clock.now += 1.0  # time passes between rounds
        await drain(sync)
        return [w[key] for w in room.local_participant.attribute_writes if key in w]

    async with sync:
        session = host.add("alice")
        settled = await writes_after(2)  # the first round learns the microphone's state
        assert settled and all(a != b for a, b in itertools.pairwise(settled))
        assert await writes_after(20) == settled

        host.move(session, "reconnecting", "connection quality poor")  # a real change
        await drain(sync)
        writes = [w[key] for w in room.local_participant.attribute_writes if key in w]
        assert writes[:-1] == settled and json.loads(writes[-1])["state"] == "syncing"


async def test_departed_participants_leave_nothing_in_the_publisher(
    room: FakeRoom, host: Host, sync: SessionSync
) -> None:
    """Regression (found by the fuzz pass): the publisher remembered the last value written
    for every ``clara.session.<identity>`` key, removed ones included, so a room with a
    stream of guests grew without bound."""
    for n in range(50):
        session = host.add(f"guest-{n}")
        await drain(sync)
        host.move(session, "closed", "participant left")
        room.remote_participants.pop(f"guest-{n}")
        await drain(sync)
    assert not [k for k in room.local_participant.attributes if "guest" in k]
    assert not [k for k in host.surface.attributes.written if "guest" in k]


async def test_configs_over_the_attribute_budget_are_said_once_and_published_when_room(
    room: FakeRoom,
    host: Host,
    settings: Settings,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A room whose configs no longer fit LiveKit's attribute budget: each one left out is
    said once (not at every validation round), counted, and published once it fits again."""
    from clara_voice.voice import attributes

    monkeypatch.setattr(attributes, "MAX_ATTRIBUTES_BYTES", 900)  # about three configs
    sync = make_sync(host, settings, clock)
    async with sync:
        sessions = [host.add(f"user-{n}") for n in range(5)]
        await drain(sync)
        for _ in range(10):
            sync.validate()
            await drain(sync)
        published = [k for k in room.local_participant.attributes if "user-" in k]
        assert 0 < len(published) < 5
        refused = [r for r in caplog.records if r.getMessage().startswith("agent attributes")]
        assert len(refused) == 5 - len(published)  # once per key, however many rounds
        assert sync.rejected["attribute_budget"] > len(refused)

        for session in sessions[: len(published)]:
            host.move(session, "closed", "participant left")
        sync.validate()
        await drain(sync)
        assert len([k for k in room.local_participant.attributes if "user-" in k]) == 5 - len(
            published
        )


async def test_a_failing_round_is_counted_and_the_loop_goes_on(
    host: Host, settings: Settings, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = make_sync(host, settings, clock, interval=0.01)
    rounds: asyncio.Queue[None] = asyncio.Queue()

    def broken(*, trigger: str = "validation") -> None:
        rounds.put_nowait(None)
        raise RuntimeError("boom")

    monkeypatch.setattr(sync, "validate", broken)
    async with sync:
        async with asyncio.timeout(2.0):
            for _ in range(3):
                await rounds.get()
    assert host.errors["session"] >= 3


# -- change requests --------------------------------------------------------------------------


async def test_rpc_changes_the_callers_session(
    room: FakeRoom, host: Host, sync: SessionSync
) -> None:
    session = host.add("alice")
    answer = await rpc(room, "alice", {"type": "voice-ptt"})
    assert answer["ok"] is True and answer["session_id"] == session.session_id
    assert answer["config"]["type"] == "voice-ptt"
    assert answer["config"]["turn_detection"] == "client"
    assert session.pipeline.types == ["voice-ptt"]  # type: ignore[union-attr]
    assert session.session_type == "voice-ptt"
    await drain(sync)
    assert attribute(room, "alice")["type"] == "voice-ptt"  # type: ignore[index]
    changed = [e for e in events(room) if e["payload"]["trigger"] == "type changed (rpc)"]
    assert changed and changed[0]["type"] == "session_state_sync"
    # naming one's own session is fine, and the current type is a no-op
    same = await rpc(room, "alice", {"type": "voice-ptt", "session_id": session.session_id})
    assert same["config"]["type"] == "voice-ptt"
    assert session.pipeline.types == ["voice-ptt"]  # type: ignore[union-attr]


async def test_attribute_changes_the_session(room: FakeRoom, host: Host, sync: SessionSync) -> None:
    session = host.add("alice")
    room.set_attributes("alice", {SESSION_TYPE_ATTRIBUTE: "text"})
    await settle_sync(sync)
    assert session.session_type == "text"
    assert attribute(room, "alice")["turn_detection"] == "none"  # type: ignore[index]
    assert any(e["payload"]["trigger"] == "type changed (attribute)" for e in events(room))
    room.set_attributes("alice", {SESSION_TYPE_ATTRIBUTE: ""})  # removed: nothing changes
    room.set_attributes("alice", {"other": "x"})
    await settle_sync(sync)
    assert session.session_type == "text" and sum(sync.rejected.values()) == 0


async def test_attribute_while_connecting_is_applied_once_active(
    room: FakeRoom, host: Host, sync: SessionSync
) -> None:
    session = host.add("alice", connect=False)
    room.set_attributes("alice", {SESSION_TYPE_ATTRIBUTE: "voice-ptt"})
    await settle_sync(sync)
    assert session.session_type == "voice-vad"
    host.move(session, "connected", "pipeline started")
    await settle_sync(sync)
    assert session.session_type == "voice-ptt"


async def test_only_the_owner_changes_a_session(
    room: FakeRoom, host: Host, sync: SessionSync
) -> None:
    alice = host.add("alice")
    bob = host.add("bob")
    payload = {"type": "text", "session_id": alice.session_id}
    assert await rpc_error(room, "bob", payload) == "not_authorized"
    assert await rpc_error(room, "mallory", {"type": "text"}) == "no_session"
    assert alice.session_type == bob.session_type == "voice-vad"
    assert alice.pipeline.types == bob.pipeline.types == []  # type: ignore[union-attr]
    assert sync.rejected == Counter({"not_authorized": 1, "no_session": 1})


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"type": "video"}, "unknown_type"),
        ({"type": 3}, "malformed_request"),
        ({"kind": "text"}, "malformed_request"),
        ({"type": "text", "session_id": 7}, "malformed_request"),
        ([1, 2], "malformed_request"),
        ("not json", "malformed_request"),
        ("", "malformed_request"),
        ("[" * 5000, "payload_too_large"),
        ("é" * (MAX_REQUEST_BYTES // 2 + 1), "payload_too_large"),
    ],
)
async def test_bad_rpc_payloads(
    room: FakeRoom, host: Host, sync: SessionSync, payload: object, code: str
) -> None:
    session = host.add("alice")
    assert await rpc_error(room, "alice", payload) == code
    assert session.session_type == "voice-vad"
    assert sync.rejected[code] == 1
    assert host.errors["session"] == 0  # a client's mistake is not the agent's error


@pytest.mark.parametrize("value", ["video", "x" * 5000, "VOICE-PTT", "voice-ptt\x00"])
async def test_bad_attribute_values_are_ignored(
    room: FakeRoom, host: Host, sync: SessionSync, value: str
) -> None:
    session = host.add("alice")
    room.set_attributes("alice", {SESSION_TYPE_ATTRIBUTE: value})
    await settle_sync(sync)
    assert session.session_type == "voice-vad"
    assert sum(sync.rejected.values()) == 1


async def test_change_requests_are_rate_limited_per_participant(
    room: FakeRoom, host: Host, sync: SessionSync, clock: Clock
) -> None:
    alice = host.add("alice")
    bob = host.add("bob")
    for i in range(5):
        await rpc(room, "alice", {"type": "text" if i % 2 == 0 else "voice-vad"})
    assert await rpc_error(room, "alice", {"type": "voice-ptt"}) == "rate_limited"
    room.set_attributes("alice", {SESSION_TYPE_ATTRIBUTE: "voice-ptt"})
    await settle_sync(sync)
    assert alice.session_type == "text"
    assert sync.rejected["rate_limited"] == 2
    assert (await rpc(room, "bob", {"type": "voice-ptt"}))["config"]["type"] == "voice-ptt"
    clock.now += 2.0  # one token back
    assert (await rpc(room, "alice", {"type": "voice-ptt"}))["config"]["type"] == "voice-ptt"
    assert bob.session_type == "voice-ptt"


async def test_a_pipeline_that_fails_to_switch(
    room: FakeRoom, host: Host, sync: SessionSync
) -> None:
    session = host.add("alice", pipeline=RetypablePipeline("alice", fail=RuntimeError("no")))
    assert await rpc_error(room, "alice", {"type": "text"}) == "reconfigure_failed"
    assert session.session_type == "voice-vad"
    assert config_of(sync, session.session_id).type == "voice-vad"  # type: ignore[union-attr]
    assert host.errors["session"] == 1


async def test_a_pipeline_that_does_something_else_is_flagged(
    room: FakeRoom, host: Host, sync: SessionSync
) -> None:
    session = host.add("alice")
    session.pipeline.session_type = "text"  # type: ignore[union-attr]
    sync.validate()
    sync.validate()
    await drain(sync)
    flagged = events(room, "session_inconsistency")
    assert [e["payload"]["issues"] for e in flagged] == [["pipeline_mismatch"]]
    session.pipeline.session_type = "voice-vad"  # type: ignore[union-attr]
    sync.validate()
    assert not config_of(sync, session.session_id).inconsistency_detected  # type: ignore[union-attr]


async def test_no_change_while_not_active(room: FakeRoom, host: Host, sync: SessionSync) -> None:
    host.add("alice", connect=False)
    assert await rpc_error(room, "alice", {"type": "text"}) == "session_not_active"


async def settle_sync(sync: SessionSync) -> None:
    await drain(sync)


# -- fuzz: bad input hurts nobody else ---------------------------------------------------------

BOB = "<bob's session id>"  # replaced by the real one in the arena
text_or_junk = st.one_of(
    st.sampled_from(["text", "voice-ptt", "voice-vad", "", "VOICE", "null", BOB]),
    st.text(max_size=12),
    st.integers(MAX_REQUEST_BYTES // 2 - 8, MAX_REQUEST_BYTES + 8).map(lambda n: "\u00e9" * n),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | text_or_junk,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=4,
)
rpc_payloads = st.one_of(
    st.builds(lambda t: json.dumps({"type": t}), json_values),
    st.builds(lambda t, s: json.dumps({"type": t, "session_id": s}), text_or_junk, text_or_junk),
    st.builds(json.dumps, json_values),
    st.text(max_size=24),
)
callers = st.sampled_from(["alice", "mallory", "", "agent-clara"])  # bob is the bystander
FUZZ = hsettings(
    max_examples=3500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture
def quiet() -> Iterator[None]:
    """Refusals are logged at warning; thousands of them would only slow the fuzz down."""
    logger = logging.getLogger(LOG.logger.name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


class Arena:
    """Two sessions on a fake room; every example pokes one of them and checks the other."""

    def __init__(self, runner: asyncio.Runner, settings: Settings) -> None:
        self.runner = runner
        self.room = FakeRoom()
        self.host = Host(self.room)
        self.clock = Clock()
        self.sync = make_sync(self.host, settings, self.clock)
        runner.run(self.sync.start())
        self.alice = self.host.add("alice")
        self.bob = self.host.add("bob")
        self.bob_config = json.dumps(self.config_json(self.bob))

    def config_json(self, session: ParticipantSession) -> dict[str, Any]:
        config = config_of(self.sync, session.session_id)
        assert config is not None
        return {k: v for k, v in config.to_json().items() if k != "last_sync_at"}

    def check_bob_untouched(self) -> None:
        assert self.bob.session_type == "voice-vad"
        assert self.bob.pipeline.types == []  # type: ignore[union-attr]
        assert json.dumps(self.config_json(self.bob)) == self.bob_config
        assert self.host.errors["session"] == 0
        assert self.alice.connection_state == "connected"

    def close(self) -> None:
        self.runner.run(self.sync.aclose())


@pytest.mark.usefixtures("quiet")
def test_fuzz_rpc_payloads(settings: Settings) -> None:
    with asyncio.Runner() as runner:
        arena = Arena(runner, settings)

        async def call(caller: str, payload: str) -> None:
            error: rtc.RpcError | None = None
            try:
                answer = await arena.room.local_participant.call_rpc(
                    caller, RPC_SET_SESSION_TYPE, payload
                )
            except rtc.RpcError as raised:
                error = raised
            if error is None:
                assert json.loads(answer)["ok"] is True and caller == "alice"
            else:
                assert json.loads(error.data or "")["error"]

        @FUZZ
        @given(caller=callers, payload=rpc_payloads, refill=st.booleans())
        def example(caller: str, payload: str, refill: bool) -> None:
            arena.clock.now += 10.0 if refill else 0.0
            runner.run(call(caller, payload.replace(BOB, arena.bob.session_id)))
            arena.check_bob_untouched()

        try:
            example()
        finally:
            arena.close()


@pytest.mark.usefixtures("quiet")
def test_fuzz_attribute_changes(settings: Settings) -> None:
    with asyncio.Runner() as runner:
        arena = Arena(runner, settings)
        keys = st.sampled_from([SESSION_TYPE_ATTRIBUTE, "other", "clara.session.bob"])
        values = text_or_junk

        async def poke(identity: str, changed: dict[str, str]) -> None:
            if identity == "agent-clara":
                # the agent's own attribute writes come back as events of its participant
                arena.room.emit(
                    "participant_attributes_changed", changed, arena.room.local_participant
                )
            elif identity in arena.room.remote_participants:
                arena.room.set_attributes(identity, changed)
            await settle_sync(arena.sync)

        @FUZZ
        @given(
            identity=st.sampled_from(["alice", "agent-clara", "nobody"]),
            changed=st.dictionaries(keys, values, max_size=4),
            refill=st.booleans(),
        )
        def example(identity: str, changed: dict[str, str], refill: bool) -> None:
            arena.clock.now += 10.0 if refill else 0.0
            runner.run(poke(identity, changed))
            arena.check_bob_untouched()

        try:
            example()
        finally:
            arena.close()


@hsettings(FUZZ, max_examples=3000)
@given(payload=rpc_payloads)
def test_fuzz_request_parsing_raises_only_request_errors(payload: str) -> None:
    from clara_voice.sync.protocol import RequestError, parse_type_request

    code: str | None = None
    try:
        request = parse_type_request(payload)
    except RequestError as error:
        code = error.code
    if code is None:
        assert request.type in ("text", "voice-ptt", "voice-vad")
    else:
        assert code in {"malformed_request", "payload_too_large", "unknown_type"}


# -- with the real agent ---------------------------------------------------------------------


async def test_with_the_agent(
    room: FakeRoom, settings: Settings, factory: FakePipelineFactory
) -> None:
    baseline, tasks = room.listener_count(), other_tasks()
    agent = ClaraVoiceAgent(room, settings, pipeline=factory)
    await agent.start()
    room.join("alice")
    await settle()
    session = agent.registry.of("alice")
    assert session is not None
    await drain(agent._sync)
    assert attribute(room, "alice")["state"] == "active"  # type: ignore[index]
    answer = await rpc(room, "alice", {"type": "text"})
    assert answer["config"]["type"] == "text" and session.session_type == "text"
    room.set_attributes("alice", {SESSION_TYPE_ATTRIBUTE: "voice-ptt"})
    assert session.session_type == "voice-ptt"
    assert session.pipeline.session_type_calls == ["text", "voice-ptt"]  # type: ignore[union-attr]

    room.quality("alice", rtc.ConnectionQuality.QUALITY_POOR)
    room.quality("alice", rtc.ConnectionQuality.QUALITY_GOOD)
    room.leave("alice")
    await settle()
    await drain(agent._sync)
    kinds = [e["type"] for e in events(room)]
    assert "connection_interruption" in kinds
    assert events(room)[-1]["payload"]["config"]["state"] == "ending"
    assert attribute(room, "alice") is None
    await agent.aclose()
    assert room.listener_count() == baseline
    assert other_tasks() == tasks
