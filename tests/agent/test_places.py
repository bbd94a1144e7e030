"""A room of at most CLARA_MAX_SESSIONS_PER_ROOM sessions (issue 16, item 3): a participant
over it is told so and gets no pipeline, and gets the next place that frees up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from clara_voice.agent.agent import ClaraVoiceAgent
from clara_voice.agent.places import ROOM_FULL_CODE
from clara_voice.config import load_settings
from clara_voice.voice.notices import NOTICE_TOPIC
from testkit.fakes import FakePipelineFactory, FakeRoom
from testkit.tasks import settle


def notices_to(room: FakeRoom, identity: str) -> list[dict[str, Any]]:
    return [
        json.loads(payload)
        for topic, payload, to in room.local_participant.published
        if topic == NOTICE_TOPIC and to == [identity]
    ]


@pytest.fixture
async def small_room(tmp_path: Path, room: FakeRoom, factory: FakePipelineFactory) -> Any:
    settings = load_settings(data_dir=tmp_path / "data", max_sessions_per_room=2)
    agent = ClaraVoiceAgent(room, settings, pipeline=factory)
    await agent.start()
    yield agent
    await agent.aclose()


async def test_a_participant_over_the_cap_is_told_and_gets_no_pipeline(
    small_room: ClaraVoiceAgent, room: FakeRoom, factory: FakePipelineFactory
) -> None:
    """Regression (issue 16, item 3): every participant got a whole pipeline, however many
    joined one room."""
    for identity in ("alice", "bob", "carol"):
        room.join(identity)
    await settle()

    assert sorted(s.participant_id for s in small_room.sessions.values()) == ["alice", "bob"]
    assert [p.identity for p in factory.started] == ["alice", "bob"]
    [notice] = notices_to(room, "carol")
    assert notice["v"] == 1 and notice["type"] == "refused"
    assert (notice["input"], notice["error"]) == ("session", ROOM_FULL_CODE)
    assert "2 people" in notice["message"]
    assert notices_to(room, "alice") == notices_to(room, "bob") == []


async def test_the_first_waiting_participant_gets_the_place_that_frees_up(
    small_room: ClaraVoiceAgent, room: FakeRoom, factory: FakePipelineFactory
) -> None:
    for identity in ("alice", "bob", "carol", "dave"):
        room.join(identity)
    await settle()
    room.leave("dave")  # gave up waiting
    room.leave("alice")
    await settle()

    assert sorted(s.participant_id for s in small_room.sessions.values()) == ["bob", "carol"]
    assert [p.identity for p in factory.open_pipelines] == ["bob", "carol"]


async def test_a_participant_waiting_in_its_grace_period_keeps_its_place(
    small_room: ClaraVoiceAgent, room: FakeRoom
) -> None:
    room.join("alice")
    room.join("bob")
    await settle()
    room.drop("alice")  # a network drop: her session waits for her
    room.join("carol")
    await settle()
    assert notices_to(room, "carol")  # the room is still full
    room.join("alice")
    await settle()
    assert sorted(s.participant_id for s in small_room.sessions.values()) == ["alice", "bob"]
