"""Room context from metadata and conversation state through the agent (seed 004)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from clara_voice.agent.agent import ClaraVoiceAgent
from clara_voice.agent.context import MAX_METADATA_BYTES, parse_room_metadata
from clara_voice.config import Settings
from clara_voice.logging import get_logger
from clara_voice.persistence.sqlite import DB_FILENAME, SQLiteBackend
from clara_voice.voice.messages import HistoryMessage
from testkit.fakes import FakePipelineFactory, FakeRoom, report
from testkit.outbox import drained as outbox_drained
from testkit.tasks import settle

LOG = get_logger("clara_voice.test")


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_metadata_names_the_conversation_and_keeps_other_keys() -> None:
    raw = json.dumps({"conversation_id": "conv-42", "user_id": 7, "locale": "fr"})
    context = parse_room_metadata(raw, LOG)
    assert context.conversation_id == "conv-42"
    assert context.user_id == "7"
    assert context.extra == {"locale": "fr"}
    assert context.known


def test_missing_metadata_gives_a_fresh_conversation_without_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = parse_room_metadata("", LOG), parse_room_metadata("{}", LOG)
    assert first.conversation_id.startswith("conv_")
    assert first.conversation_id != second.conversation_id
    assert not first.known
    assert warnings_of(caplog) == []


@pytest.mark.parametrize(
    ("raw", "warning"),
    [
        ("{not json", "room metadata is not JSON, starting a fresh conversation"),
        ("[1, 2]", "room metadata is not a JSON object, starting a fresh conversation"),
        (
            json.dumps({"conversation_id": 12}),
            "room metadata has an invalid conversation_id, starting a fresh conversation",
        ),
        (
            json.dumps({"conversation_id": "bad id with spaces"}),
            "room metadata has an invalid conversation_id, starting a fresh conversation",
        ),
        (
            json.dumps({"conversation_id": "c1", "pad": "x" * MAX_METADATA_BYTES}),
            "room metadata too large, starting a fresh conversation",
        ),
    ],
)
def test_bad_metadata_is_one_warning_and_a_fresh_context(
    raw: str, warning: str, caplog: pytest.LogCaptureFixture
) -> None:
    context = parse_room_metadata(raw, LOG)
    assert warnings_of(caplog) == [warning]
    assert context.conversation_id.startswith("conv_")
    assert not context.known


def test_metadata_nested_too_deeply_is_bad_metadata(caplog: pytest.LogCaptureFixture) -> None:
    """Regression (found by the fuzz pass): json.loads raises RecursionError on deeply nested
    JSON, which escaped the room_metadata_changed handler."""
    context = parse_room_metadata("[" * 30_000 + "]" * 30_000, LOG)
    assert context.conversation_id.startswith("conv_") and not context.known
    assert "room metadata is not JSON, starting a fresh conversation" in warnings_of(caplog)


def test_a_wrongly_typed_user_id_is_dropped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    context = parse_room_metadata(json.dumps({"conversation_id": "c1", "user_id": [1]}), LOG)
    assert context.conversation_id == "c1"
    assert context.user_id is None
    assert warnings_of(caplog) == ["room metadata has an invalid user_id, ignoring it"]


async def run_agent(
    room: FakeRoom, settings: Settings, factory: FakePipelineFactory
) -> ClaraVoiceAgent:
    agent = ClaraVoiceAgent(
        room, settings, pipeline=factory, backend=SQLiteBackend(settings.data_dir / DB_FILENAME)
    )
    await agent.start()
    return agent


def talk(agent: ClaraVoiceAgent, identity: str, *exchanges: tuple[str, str]) -> None:
    """What the pipeline reports for each user message and its answer."""
    session = next(s for s in agent.sessions.values() if s.participant_id == identity)
    for user, reply in exchanges:
        report(session, HistoryMessage(role="user", text=user))
        report(session, HistoryMessage(role="assistant", text=reply, metrics={"e2e_latency": 0.8}))


async def read_store(
    settings: Settings, conversation_id: str, participant: str = "alice"
) -> list[Any]:
    backend = SQLiteBackend(settings.data_dir / DB_FILENAME)
    try:
        return await backend.get_recent_messages(conversation_id, 100, participant=participant)
    finally:
        await backend.aclose()


async def test_a_conversation_is_persisted_and_continues_in_the_next_job(
    settings: Settings, factory: FakePipelineFactory
) -> None:
    metadata = json.dumps({"conversation_id": "conv-7", "user_id": "u1"})
    room = FakeRoom("kitchen", metadata=metadata)
    agent = await run_agent(room, settings, factory)
    assert agent.conversation.conversation_id == "conv-7"
    room.join("alice")
    await settle()
    talk(agent, "alice", ("hello", "hi alice"), ("what time is it", "noon"))
    room.leave("alice")
    await settle()
    await agent.aclose()

    stored = await read_store(settings, "conv-7")
    assert [(m.role, m.text) for m in stored] == [
        ("user", "hello"),
        ("assistant", "hi alice"),
        ("user", "what time is it"),
        ("assistant", "noon"),
    ]

    # the next job in a room of the same conversation continues from those messages
    room2 = FakeRoom("kitchen", metadata=metadata)
    agent2 = await run_agent(room2, settings, FakePipelineFactory())
    room2.join("alice")
    await settle()
    (session,) = agent2.sessions.values()
    assert [m.text for m in session.earlier_messages] == [m.text for m in stored]
    await agent2.aclose()


async def test_the_session_summary_and_participant_events_are_saved_at_cleanup(
    settings: Settings, factory: FakePipelineFactory
) -> None:
    import sqlite3

    room = FakeRoom("hall", metadata=json.dumps({"conversation_id": "conv-9"}))
    agent = await run_agent(room, settings, factory)
    room.join("alice", metadata='{"plan": "pro"}')
    room.join("bob")
    await settle()
    talk(agent, "alice", ("one", "two"))
    alice = next(s for s in agent.sessions.values() if s.participant_id == "alice")
    room.leave("alice")
    await settle()
    await agent.aclose()

    with sqlite3.connect(settings.data_dir / DB_FILENAME) as db:
        db.row_factory = sqlite3.Row
        (summary,) = db.execute(
            "SELECT * FROM sessions WHERE session_id = ?", (alice.session_id,)
        ).fetchall()
        events = db.execute(
            "SELECT participant, event FROM participant_events ORDER BY id"
        ).fetchall()
    assert summary["conversation_id"] == "conv-9"
    assert summary["room"] == "hall"
    assert summary["message_count"] == 2
    assert [m["text"] for m in json.loads(summary["messages"])] == ["one", "two"]
    participants = {p["identity"]: p for p in json.loads(summary["participants"])}
    assert set(participants) == {"alice", "bob"}
    assert participants["alice"]["metadata"] == '{"plan": "pro"}'
    assert participants["alice"]["left_at"] is not None
    assert summary["duration_s"] >= 0
    assert [tuple(e) for e in events] == [
        ("alice", "connected"),
        ("bob", "connected"),
        ("alice", "disconnected"),
    ]


async def test_the_agent_follows_room_metadata_changes(
    settings: Settings, factory: FakePipelineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    room = FakeRoom(metadata=json.dumps({"conversation_id": "conv-a"}))
    agent = await run_agent(room, settings, factory)
    room.emit("room_metadata_changed", room.metadata, "{broken")
    assert agent.conversation.conversation_id == "conv-a"  # bad metadata changes nothing but warns
    assert "room metadata is not JSON, starting a fresh conversation" in warnings_of(caplog)
    new = json.dumps({"conversation_id": "conv-b", "user_id": "u2"})
    room.emit("room_metadata_changed", room.metadata, new)
    assert agent.conversation.conversation_id == "conv-b"
    assert agent.conversation.context.user_id == "u2"
    await agent.aclose()


async def test_saving_never_waits_for_a_slow_or_dead_backend(
    room: FakeRoom, settings: Settings, factory: FakePipelineFactory
) -> None:
    """The agent keeps talking while the backend is down: records wait in the outbox."""
    from clara_voice.persistence import BackendError, OutboxRecord, StoredMessage

    class DownBackend:
        async def agent_joined(self, *, room: str, conversation_id: str) -> str:
            raise BackendError("down", retryable=True)

        async def get_recent_messages(
            self, conversation_id: str, limit: int, *, participant: str
        ) -> list[StoredMessage]:
            raise BackendError("down", retryable=True)

        async def deliver(self, record: OutboxRecord) -> None:
            raise BackendError("down", retryable=True)

        async def aclose(self) -> None:
            return None

    agent = ClaraVoiceAgent(room, settings, pipeline=factory, backend=DownBackend())
    await agent.start()  # joins with the room's id although the backend did not confirm it
    room.join("alice")
    await settle()
    talk(agent, "alice", *[(f"q{i}", f"a{i}") for i in range(50)])
    recorder = agent.conversation.recorder
    assert recorder is not None
    await agent.aclose()  # flushes for CLARA_OUTBOX_FLUSH_TIMEOUT, then leaves the rest
    assert recorder.outbox.pending_count() > 100

    # the next job on the same data directory delivers what the backend missed, once
    agent2 = await run_agent(FakeRoom(), settings, FakePipelineFactory())
    recorder2 = agent2.conversation.recorder
    assert recorder2 is not None
    async with asyncio.timeout(10):
        await outbox_drained(recorder2.outbox)
    await agent2.aclose()
    stored = await read_store(settings, agent.conversation.conversation_id)
    assert [m.text for m in stored] == [t for i in range(50) for t in (f"q{i}", f"a{i}")]


async def test_a_participant_who_leaves_and_comes_back_continues_from_what_was_said(
    settings: Settings, factory: FakePipelineFactory
) -> None:
    """Regression: history was loaded once at job start, so a participant who left on
    purpose and rejoined in the same job started without what had been said since."""
    room = FakeRoom("study", metadata=json.dumps({"conversation_id": "conv-r"}))
    agent = await run_agent(room, settings, factory)
    room.join("alice")
    await settle()
    talk(agent, "alice", ("remember the blue door", "noted"))
    room.leave("alice")
    await settle()
    room.join("alice")
    await settle()
    (session,) = agent.sessions.values()
    assert [m.text for m in session.earlier_messages] == ["remember the blue door", "noted"]
    await agent.aclose()


async def test_a_room_switched_to_another_conversation_loads_that_conversations_history(
    settings: Settings, factory: FakePipelineFactory
) -> None:
    """Regression: a room-metadata switch to another conversation kept the first one's
    history for the sessions that started after it."""
    other = FakeRoom("den", metadata=json.dumps({"conversation_id": "conv-b"}))
    earlier = await run_agent(other, settings, FakePipelineFactory())
    other.join("bob")
    await settle()
    talk(earlier, "bob", ("the code is 42", "got it"))
    await earlier.aclose()

    room = FakeRoom("den", metadata=json.dumps({"conversation_id": "conv-a"}))
    agent = await run_agent(room, settings, factory)
    room.join("bob")
    await settle()
    talk(agent, "bob", ("in conversation a", "yes"))
    room.leave("bob")
    await settle()
    room.emit("room_metadata_changed", room.metadata, json.dumps({"conversation_id": "conv-b"}))
    room.join("bob")
    room.join("carol")
    await settle()
    bob, carol = (session_of(agent, identity) for identity in ("bob", "carol"))
    assert [m.text for m in bob.earlier_messages] == ["the code is 42", "got it"]
    assert carol.earlier_messages == []  # bob's words are bob's
    await agent.aclose()


def session_of(agent: ClaraVoiceAgent, identity: str) -> Any:
    (session,) = [s for s in agent.sessions.values() if s.participant_id == identity]
    return session


def llm_history(factory: FakePipelineFactory, identity: str) -> list[str]:
    """What each pipeline of ``identity`` was started with: what its LLM would see first."""
    return [m.text for p in factory.started if p.identity == identity for m in p.history]


async def test_a_later_joiner_never_gets_another_participants_words(
    settings: Settings, factory: FakePipelineFactory
) -> None:
    """Regression (issue 16, critical 1): the conversation's earlier messages were one
    room-wide list fed by every session, and every new session was seeded with it: Bob,
    joining after Alice told Clara a secret, had Alice's words in his LLM context."""
    metadata = json.dumps({"conversation_id": "conv-shared"})
    room = FakeRoom("office", metadata=metadata)
    agent = await run_agent(room, settings, factory)
    room.join("alice")
    await settle()
    talk(agent, "alice", ("my pin is 4711", "noted, alice"))
    room.join("bob")
    await settle()
    talk(agent, "bob", ("what is the weather", "sunny"))
    assert llm_history(factory, "bob") == []
    room.leave("alice")
    room.leave("bob")
    await settle()
    room.join("bob")  # a rejoin within the job: his own history only
    room.join("alice")
    await settle()
    assert llm_history(factory, "bob") == ["what is the weather", "sunny"]
    assert llm_history(factory, "alice") == ["my pin is 4711", "noted, alice"]
    await agent.aclose()

    # the next job of the conversation: each loads its own history from the store
    room2 = FakeRoom("office", metadata=metadata)
    factory2 = FakePipelineFactory()
    agent2 = await run_agent(room2, settings, factory2)
    room2.join("bob")
    room2.join("carol")
    await settle()
    assert llm_history(factory2, "bob") == ["what is the weather", "sunny"]
    assert llm_history(factory2, "carol") == []
    await agent2.aclose()
    # summaries keep listing everyone who was present
    import sqlite3

    with sqlite3.connect(settings.data_dir / DB_FILENAME) as db:
        rows = db.execute("SELECT participant, participants FROM sessions").fetchall()
    listed = {p["identity"] for _, participants in rows for p in json.loads(participants)}
    assert {"alice", "bob", "carol"} <= listed


async def test_a_long_sessions_summary_stays_small(
    settings: Settings, factory: FakePipelineFactory
) -> None:
    """Regression: each session summary re-embedded the whole message history, so records
    grew without bound; the turns are stored one by one already."""
    import sqlite3

    room = FakeRoom("hall", metadata=json.dumps({"conversation_id": "conv-long"}))
    agent = await run_agent(room, settings, factory)
    room.join("alice")
    await settle()
    talk(agent, "alice", *[(f"question {n}", f"answer {n}") for n in range(40)])
    room.leave("alice")
    await settle()
    await agent.aclose()

    with sqlite3.connect(settings.data_dir / DB_FILENAME) as db:
        db.row_factory = sqlite3.Row
        (summary,) = db.execute("SELECT * FROM sessions").fetchall()
    messages = json.loads(summary["messages"])
    assert summary["message_count"] == 80
    assert (summary["first_seq"], summary["last_seq"]) == (0, 79)
    assert len(messages) == settings.summary_messages == 20
    assert messages[-1]["text"] == "answer 39"


async def test_a_stream_of_guests_keeps_the_participant_list_bounded(
    settings: Settings, factory: FakePipelineFactory
) -> None:
    """Regression (found by the fuzz pass): the job kept every participant that ever joined,
    for the session summaries, so a room with a stream of guests grew without bound."""
    from clara_voice.agent.conversation import MAX_DEPARTED

    room = FakeRoom("hall")
    agent = await run_agent(room, settings, factory)
    room.join("host")
    for n in range(MAX_DEPARTED + 30):
        room.join(f"guest-{n}")
        await settle()
        room.leave(f"guest-{n}")
        await settle()
    room.join("guest-0")  # back again: listed as present, and newest
    await settle()
    kept = list(agent.conversation.participants)
    assert len(kept) == MAX_DEPARTED + 2  # the two present, and the latest who left
    assert kept[0] == "host" and kept[-1] == "guest-0"
    assert f"guest-{MAX_DEPARTED + 29}" in kept and "guest-29" not in kept
    await agent.aclose()
