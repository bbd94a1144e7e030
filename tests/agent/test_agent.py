"""ClaraVoiceAgent's session lifecycle (seed 000) on the fake room."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from livekit import rtc

from clara_voice.agent.agent import ClaraVoiceAgent
from clara_voice.agent.session import ParticipantSession
from clara_voice.config import Settings
from clara_voice.voice.messages import HistoryMessage
from testkit.fakes import FakePipeline, FakePipelineFactory, FakeRoom, report
from testkit.pipeline import until
from testkit.tasks import other_tasks, settle


def session_of(agent: ClaraVoiceAgent, identity: str):  # type: ignore[no-untyped-def]
    matches = [s for s in agent.sessions.values() if s.participant_id == identity]
    assert len(matches) <= 1, f"{identity} has {len(matches)} sessions"
    return matches[0] if matches else None


async def test_join_creates_a_connected_session_with_the_seed_fields(
    agent: ClaraVoiceAgent, room: FakeRoom, factory: FakePipelineFactory
) -> None:
    room.join("alice")
    await settle()

    assert len(agent.sessions) == 1
    (session_id, session), *_ = agent.sessions.items()
    assert session.session_id == session_id
    assert session_id.startswith("session_") and "alice" in session_id
    assert session.participant_id == "alice"
    assert session.message_count == 0
    assert session.reconnection_attempts == 0
    assert session.connection_state == "connected"
    assert session.start_time.tzinfo is not None
    assert [p.identity for p in factory.open_pipelines] == ["alice"]


async def test_leave_cleans_up_the_session_and_closes_its_pipeline(
    agent: ClaraVoiceAgent, room: FakeRoom, factory: FakePipelineFactory
) -> None:
    room.join("alice")
    await settle()
    session = session_of(agent, "alice")

    room.leave("alice")
    await settle()

    assert agent.sessions == {}
    assert session is not None and session.connection_state == "closed"
    assert factory.open_pipelines == []
    assert factory.started[0].close_calls == 1


async def test_seed_log_messages(
    agent: ClaraVoiceAgent, room: FakeRoom, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clara_voice")
    room.join("alice")
    await settle()
    room.leave("alice")
    await settle()

    messages = [r.getMessage() for r in caplog.records if r.name == "clara_voice.agent"]
    for expected in ("participant joined", "session initialized", "cleaning up session"):
        assert expected in messages
    joined = next(r for r in caplog.records if r.getMessage() == "session initialized")
    assert joined.participant == "alice"  # type: ignore[attr-defined]
    assert joined.session_id.startswith("session_")  # type: ignore[attr-defined]


async def test_several_participants_each_get_their_own_session(
    agent: ClaraVoiceAgent, room: FakeRoom, factory: FakePipelineFactory
) -> None:
    for name in ("alice", "bob", "carol"):
        room.join(name)
    await settle()
    assert sorted(s.participant_id for s in agent.sessions.values()) == ["alice", "bob", "carol"]
    assert len({p.identity for p in factory.open_pipelines}) == 3

    room.leave("bob")
    await settle()
    assert sorted(s.participant_id for s in agent.sessions.values()) == ["alice", "carol"]
    assert sorted(p.identity for p in factory.open_pipelines) == ["alice", "carol"]


async def test_same_identity_leaving_and_rejoining_gets_a_new_session(
    agent: ClaraVoiceAgent, room: FakeRoom, factory: FakePipelineFactory
) -> None:
    room.join("alice")
    await settle()
    first = session_of(agent, "alice")
    room.leave("alice")
    room.join("alice")
    await settle()

    second = session_of(agent, "alice")
    assert first is not None and second is not None
    assert second.session_id != first.session_id
    assert first.connection_state == "closed"
    assert second.connection_state == "connected"
    assert len(factory.open_pipelines) == 1


async def test_a_stale_leave_does_not_end_the_newer_session(
    agent: ClaraVoiceAgent, room: FakeRoom
) -> None:
    """Regression: a leave for an old connection of an identity must not close the new one."""
    old = room.join("alice")
    await settle()
    # a second connection of the same identity replaced the first before the first's
    # leave reached the agent
    room.remote_participants.pop("alice")
    room.join("alice")
    await settle()
    current = session_of(agent, "alice")
    await agent.on_participant_left(old)

    assert session_of(agent, "alice") is current
    assert current is not None and current.connection_state == "connected"


async def test_session_ids_are_unique_for_joins_in_the_same_millisecond(
    room: FakeRoom,
    settings: Settings,
    factory: FakePipelineFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("clara_voice.agent.session.time.time", lambda: 1_700_000_000.0)
    agent = ClaraVoiceAgent(room, settings, pipeline=factory)
    ids = set()
    for _ in range(50):
        session = await agent.on_participant_joined(room.join("alice"))
        assert session is not None
        ids.add(session.session_id)
        room.leave("alice")
        await agent.cleanup_session(session.session_id)
    assert len(ids) == 50
    await agent.aclose()


@pytest.mark.parametrize(
    "kind",
    [
        rtc.ParticipantKind.PARTICIPANT_KIND_AGENT,
        rtc.ParticipantKind.PARTICIPANT_KIND_EGRESS,
        rtc.ParticipantKind.PARTICIPANT_KIND_INGRESS,
    ],
)
async def test_non_human_participants_get_no_session(
    agent: ClaraVoiceAgent, room: FakeRoom, factory: FakePipelineFactory, kind: int
) -> None:
    room.join("other-agent", kind=kind)
    await settle()
    assert agent.sessions == {}
    assert factory.started == []
    room.leave("other-agent")
    await settle()
    assert agent.error_count == 0


@pytest.mark.parametrize(
    "kind",
    [rtc.ParticipantKind.PARTICIPANT_KIND_SIP, rtc.ParticipantKind.PARTICIPANT_KIND_CONNECTOR],
)
async def test_phone_callers_get_a_session(
    agent: ClaraVoiceAgent, room: FakeRoom, kind: int
) -> None:
    room.join("+15550100", kind=kind)
    await settle()
    assert session_of(agent, "+15550100") is not None


async def test_participants_already_in_the_room_get_sessions_at_start(
    room: FakeRoom, settings: Settings, factory: FakePipelineFactory
) -> None:
    room.join("early")
    room.join("bot", kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT)
    agent = ClaraVoiceAgent(room, settings, pipeline=factory)
    await agent.start()
    await settle()
    assert [s.participant_id for s in agent.sessions.values()] == ["early"]
    await agent.aclose()


async def test_creation_failure_is_logged_counted_and_isolated(
    agent: ClaraVoiceAgent,
    room: FakeRoom,
    factory: FakePipelineFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    factory.fail["bob"] = RuntimeError("stt unavailable")
    room.join("alice")
    room.join("bob")
    room.join("carol")
    await settle()

    assert sorted(s.participant_id for s in agent.sessions.values()) == ["alice", "carol"]
    assert agent.error_count == 1
    assert agent.registry.state_transitions["connecting->error"] == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["Failed to initialize session for participant bob. Error: stt unavailable"]

    # everyone else keeps working, and bob can try again
    factory.fail.clear()
    room.leave("bob")
    room.join("bob")
    room.leave("alice")
    await settle()
    assert sorted(s.participant_id for s in agent.sessions.values()) == ["bob", "carol"]


async def test_leaving_while_the_pipeline_starts_leaves_nothing_behind(
    agent: ClaraVoiceAgent, room: FakeRoom, factory: FakePipelineFactory
) -> None:
    factory.hold["alice"] = asyncio.Event()
    room.join("alice")
    await asyncio.wait_for(factory.starting.wait(), 2)
    assert session_of(agent, "alice") is not None  # stored while connecting (seed 000)
    assert session_of(agent, "alice").connection_state == "connecting"  # type: ignore[union-attr]

    room.leave("alice")
    await settle()

    assert agent.sessions == {}
    assert factory.cancelled == ["alice"]
    assert factory.open_pipelines == []
    assert agent.error_count == 0


async def test_a_pipeline_that_fails_to_close_is_counted_and_the_session_still_ends(
    agent: ClaraVoiceAgent, room: FakeRoom, factory: FakePipelineFactory
) -> None:
    room.join("alice")
    await settle()
    factory.started[0].close_error = RuntimeError("socket already gone")
    room.leave("alice")
    await settle()
    assert agent.sessions == {}
    assert agent.error_count == 1


async def test_transitions_are_checked_and_counted(agent: ClaraVoiceAgent, room: FakeRoom) -> None:
    from clara_voice.agent.session import IllegalTransition

    room.join("alice")
    await settle()
    session = session_of(agent, "alice")
    assert session is not None
    with pytest.raises(IllegalTransition):
        agent.registry.transition(session, "connecting", reason="test")
    room.leave("alice")
    await settle()
    assert agent.registry.state_transitions == {"connecting->connected": 1, "connected->closed": 1}


async def test_aclose_twice_and_nothing_leaks(
    room: FakeRoom, settings: Settings, factory: FakePipelineFactory
) -> None:
    tasks_before = other_tasks()
    listeners_before = room.listener_count()
    agent = ClaraVoiceAgent(room, settings, pipeline=factory)
    await agent.start()
    room.join("alice")
    room.join("bob")
    factory.hold["carol"] = asyncio.Event()
    room.join("carol")  # still starting when the agent closes
    await asyncio.wait_for(factory.starting.wait(), 2)
    await asyncio.sleep(0)
    assert room.listener_count() > listeners_before  # the agent follows the room

    await agent.aclose()
    await agent.aclose()

    assert agent.sessions == {}
    assert factory.open_pipelines == []
    assert factory.cancelled == ["carol"]
    assert room.listener_count() == listeners_before
    assert other_tasks() == tasks_before
    # events after close are ignored, not half-handled
    room.join("late")
    await settle()
    assert agent.sessions == {}
    assert factory.open_pipelines == []


async def test_aclose_without_start_is_safe(room: FakeRoom, settings: Settings) -> None:
    agent = ClaraVoiceAgent(room, settings, pipeline=FakePipelineFactory())
    await agent.aclose()
    assert room.listener_count() == 0


def sync_events(room: FakeRoom) -> list[dict[str, object]]:
    """The ``clara.sync`` events the agent sent, in order."""
    return [
        json.loads(payload)["payload"]
        for topic, payload, _ in room.local_participant.published
        if topic == "clara.sync"
    ]


async def test_the_first_config_a_client_gets_has_the_type_it_asked_for(
    agent: ClaraVoiceAgent, room: FakeRoom
) -> None:
    """Regression (found by the web client against the real server): a session's first
    event and attribute carried the server's default type while its pipeline was starting,
    although the client's token asked for another."""
    room.join("alice", attributes={"clara.session_type": "text"})
    await settle()
    await agent._sync.drain()
    first = sync_events(room)[0]
    assert first["config"]["type"] == "text"  # type: ignore[index]
    written = [w for w in room.local_participant.attribute_writes if "clara.session.alice" in w]
    assert json.loads(written[0]["clara.session.alice"])["type"] == "text"


async def test_a_client_that_rejoins_hears_its_old_session_end_before_the_new_one_starts(
    room: FakeRoom, settings: Settings
) -> None:
    """Regression (found by the web client against the real server): after End Session and
    Start Session with the same identity, the old session's ``ending`` event arrived after
    the new session's first events, because the old one was marked ended only once its
    pipeline had closed."""
    agent = ClaraVoiceAgent(room, settings, pipeline=FakePipelineFactory(close_delay=0.3))
    await agent.start()
    room.join("alice")
    await settle()
    old = session_of(agent, "alice")
    room.leave("alice")
    room.join("alice")
    await settle()
    await agent._sync.drain()
    new = session_of(agent, "alice")
    assert old is not None and new is not None and old is not new

    order = [(e["session_id"], e["config"]["state"]) for e in sync_events(room)]  # type: ignore[index]
    ending = order.index((old.session_id, "ending"))
    first_new = next(i for i, (sid, _) in enumerate(order) if sid == new.session_id)
    assert ending < first_new, order
    await agent.aclose()


@pytest.mark.parametrize("error", [True, False])
async def test_a_pipeline_livekit_closes_ends_the_session_and_fails_it_only_on_error(
    agent: ClaraVoiceAgent, room: FakeRoom, error: bool
) -> None:
    """Regression: livekit closes a job's first AgentSession when the job shuts down, and
    that close marked its participant ``error`` as if the pipeline had failed. (A failed
    pipeline of a participant still in the room is rebuilt: the tests below.)"""
    room.join("alice")
    await settle()
    session = session_of(agent, "alice")
    assert session is not None

    pipeline = session.pipeline
    assert isinstance(pipeline, FakePipeline)
    room.remote_participants.pop("alice")  # gone, as livekit sees it when the job ends
    pipeline.events.pipeline_closed("error" if error else "user_initiated", error=error)
    await settle()
    assert agent.sessions == {}
    assert session.connection_state == "closed"
    assert (agent.registry.state_transitions["connected->error"] == 1) is error


@pytest.fixture
async def alice(
    agent: ClaraVoiceAgent, room: FakeRoom, monkeypatch: pytest.MonkeyPatch
) -> ParticipantSession:
    """Alice's session, with pipeline rebuilds 10 ms apart (three of them)."""
    from clara_voice.agent import revival

    monkeypatch.setattr(revival, "BACKOFF", (0.01, 0.01, 0.01))
    room.join("alice")
    await settle()
    session = session_of(agent, "alice")
    assert session is not None
    return session


async def test_a_pipeline_livekit_closed_on_an_error_is_rebuilt_for_the_same_session(
    agent: ClaraVoiceAgent, factory: FakePipelineFactory, alice: ParticipantSession
) -> None:
    """Regression (issue 16, item 7): livekit closes an AgentSession after unrecoverable
    STT errors; the participant, still in the room, was left talking to nobody."""
    session = alice
    report(session, HistoryMessage(role="user", text="book a table"))
    report(session, HistoryMessage(role="assistant", text="for how many?"))
    first = session.pipeline
    assert isinstance(first, FakePipeline)

    first.events.pipeline_closed("error", error=True)
    await until(lambda: len(factory.started) == 2, timeout=5, what="a new pipeline")
    await settle()

    assert session_of(agent, "alice") is session  # the same session goes on
    second = session.pipeline
    assert isinstance(second, FakePipeline) and second is not first and first.closed
    assert [m.text for m in second.history] == ["book a table", "for how many?"]
    assert second.apologies == 1
    assert session.connection_state == "connected"
    moves = agent.registry.state_transitions
    assert moves["connected->error"] == 1 and moves["error->connected"] == 1
    await agent.aclose()
    assert second.closed


async def test_a_pipeline_that_keeps_failing_ends_the_session_after_the_last_rebuild(
    agent: ClaraVoiceAgent, factory: FakePipelineFactory, alice: ParticipantSession
) -> None:
    session = alice
    for n in range(3):
        pipeline = session.pipeline
        assert isinstance(pipeline, FakePipeline)
        pipeline.events.pipeline_closed("error", error=True)
        await until(lambda n=n: len(factory.started) == n + 2, timeout=5, what="a rebuild")
        await settle()
    session.pipeline.events.pipeline_closed("error", error=True)  # type: ignore[union-attr]
    await settle()
    assert agent.sessions == {} and session.connection_state == "closed"
    assert factory.open_pipelines == []
    await agent.aclose()


async def test_a_rebuild_that_cannot_start_is_tried_again_then_the_session_ends(
    agent: ClaraVoiceAgent, factory: FakePipelineFactory, alice: ParticipantSession
) -> None:
    session = alice
    factory.fail["alice"] = RuntimeError("the STT is still down")
    session.pipeline.events.pipeline_closed("error", error=True)  # type: ignore[union-attr]
    await until(lambda: not agent.sessions, timeout=5, what="the session's end")
    assert session.connection_state == "closed"
    assert agent.error_count >= 3  # each failed start counted
    await agent.aclose()
    assert not other_tasks()
