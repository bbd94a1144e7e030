"""Fuzz: what a participant or the room's creator sends a running agent.

A real :class:`ClaraVoiceAgent` (sessions, sync, conversation, recorder and outbox) on a
fake room with two people: alice, whom every example pokes, and bob, a bystander. Each
example is room metadata, a participant's metadata or attributes, a data packet, an RPC of
any method and payload, or a stranger of any kind, identity and metadata joining and
leaving. After each one, bob's session is exactly as it was, alice still has hers, and
nothing escaped (see conftest's :class:`Watch`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from livekit import rtc

from clara_voice._ratelimit import MAX_IDENTITIES
from clara_voice.agent.agent import ClaraVoiceAgent
from clara_voice.agent.conversation import MAX_DEPARTED, MAX_PARTICIPANT_METADATA
from clara_voice.config import load_settings
from clara_voice.persistence.base import OutboxRecord, StoredMessage
from clara_voice.states import SESSION_TYPE_ATTRIBUTE
from clara_voice.sync.protocol import RPC_SET_SESSION_TYPE, SESSION_ATTRIBUTE_PREFIX
from clara_voice.voice.routing import PTT_METHODS
from testkit.checks import config_of
from testkit.fakes import FakePipelineFactory, FakeRoom
from testkit.outbox import drained as outbox_drained
from testkit.tasks import settle
from tests.fuzz.conftest import Watch, budget, deeply_nested, long_texts, texts
from tests.fuzz.test_chat_and_push_to_talk import rpc

SURFACE = budget("room")
DEEP = deeply_nested(20_000)


junk_text = st.one_of(
    texts(max_size=40),
    st.sampled_from(["", "{}", "[]", "null", '{"conversation_id": 5}', "\x00", DEEP]),
    long_texts(),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | texts(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts(max_size=8), inner),
    max_leaves=6,
)
room_metadata = st.one_of(
    junk_text,
    st.builds(
        lambda c, u, extra: json.dumps({"conversation_id": c, "user_id": u, **extra}),
        st.one_of(st.sampled_from(["conv-1", "conv-2"]), json_values),
        json_values,
        st.dictionaries(texts(max_size=8), json_values, max_size=3),
    ),
)
identities = st.one_of(
    st.sampled_from(["alice", "bob", "agent-clara", "", "mallory"]), texts(max_size=12)
)
attributes = st.dictionaries(
    st.one_of(
        st.sampled_from([SESSION_TYPE_ATTRIBUTE, SESSION_ATTRIBUTE_PREFIX + "bob"]),
        texts(max_size=10),
    ),
    st.one_of(st.sampled_from(["text", "voice-ptt", "voice-vad", ""]), junk_text),
    max_size=3,
)
kinds = st.sampled_from(list(rtc.ParticipantKind.values()))

operations = st.one_of(
    st.tuples(st.just("room_metadata"), room_metadata),
    st.tuples(st.just("participant_metadata"), st.sampled_from(["alice", "stranger"]), junk_text),
    st.tuples(st.just("attributes"), attributes),
    st.tuples(
        st.just("data"),
        st.sampled_from(["alice", "stranger"]),
        st.binary(max_size=64),
        st.one_of(st.sampled_from(["lk.chat", "clara.sync", "clara.notice", ""]), texts()),
    ),
    st.tuples(
        st.just("rpc"),
        identities,
        st.sampled_from([RPC_SET_SESSION_TYPE, *PTT_METHODS, "nope"]),
        st.one_of(junk_text, st.builds(json.dumps, json_values)),
    ),
    st.tuples(st.just("stranger"), identities, kinds, junk_text, attributes),
)


class FuzzBackend:
    """A backend that takes everything, and answers history in any shape it is told."""

    def __init__(self) -> None:
        self.delivered = 0

    async def agent_joined(self, *, room: str, conversation_id: str) -> str:
        return conversation_id

    async def get_recent_messages(
        self, conversation_id: str, limit: int, *, participant: str
    ) -> list[StoredMessage]:
        return [
            StoredMessage(
                role="user",
                text=conversation_id,
                at="2025-01-01T00:00:00Z",
                participant=participant,
            )
        ]

    async def deliver(self, record: OutboxRecord) -> None:
        self.delivered += 1

    async def aclose(self) -> None:
        pass


class Arena:
    def __init__(self, runner: asyncio.Runner, data_dir: Path) -> None:
        self.runner = runner
        self.room = FakeRoom(metadata=json.dumps({"conversation_id": "conv-1"}))
        self.settings = load_settings(data_dir=data_dir, sync_interval=3600)
        self.factory = FakePipelineFactory()
        self.agent = ClaraVoiceAgent(
            self.room,  # type: ignore[arg-type]
            self.settings,
            pipeline=self.factory,
            backend=FuzzBackend(),
        )
        runner.run(self._start())
        self.bob = self.agent.registry.of("bob")
        assert self.bob is not None
        self.bob_state = self.session_state("bob")

    async def _start(self) -> None:
        # attribute writes are coalesced to one per 0.5 s for the SFU's sake: not here
        self.agent._sync._publisher._attribute_interval = 0.0
        await self.agent.start()
        self.room.join("alice")
        self.room.join("bob")
        await self.settled()

    def fill(self) -> None:
        self.runner.run(self._fill_bounded_caches())

    async def _fill_bounded_caches(self) -> None:
        """Fill what the agent keeps up to a bound (participants who left, with the longest
        metadata; per-caller rate limits) so the memory check sees a leak, not a fill."""
        for n in range(MAX_DEPARTED + 1):
            self.room.join(f"warm-{n}", metadata="m" * MAX_PARTICIPANT_METADATA)
            await settle()
            self.room.leave(f"warm-{n}")
            await settle()
        for n in range(MAX_IDENTITIES + 1):
            await rpc(self.room, f"caller-{n}", RPC_SET_SESSION_TYPE, "{}")
        await self.settled()

    async def settled(self) -> None:
        await settle()
        async with asyncio.timeout(2.0):
            await self.agent._sync.drain()

    def session_state(self, identity: str) -> dict[str, Any]:
        session = self.agent.registry.of(identity)
        assert session is not None, f"{identity} lost its session"
        config = config_of(self.agent._sync, session.session_id)
        assert config is not None
        return {
            "session_id": session.session_id,
            "type": session.session_type,
            "state": session.connection_state,
            "pipeline": id(session.pipeline),
            "closed": session.pipeline.closed if session.pipeline else None,  # type: ignore[attr-defined]
            "retyped": list(session.pipeline.session_type_calls),  # type: ignore[union-attr]
            "config": {k: v for k, v in config.to_json().items() if k != "last_sync_at"},
            "attribute": self.room.local_participant.attributes.get(
                SESSION_ATTRIBUTE_PREFIX + identity
            ),
        }

    async def apply(self, operation: tuple[Any, ...]) -> None:
        kind, *args = operation
        room = self.room
        if kind == "room_metadata":
            old, room.metadata = room.metadata, args[0]
            room.emit("room_metadata_changed", old, args[0])
        elif kind == "participant_metadata":
            who, new = args
            if who == "stranger":
                room.join("stranger")
            participant = room.remote_participants[who]
            old = participant.metadata
            participant._info.metadata = new
            room.emit("participant_metadata_changed", participant, old, new)
            if who == "stranger":
                room.leave("stranger")
        elif kind == "attributes":
            room.set_attributes("alice", args[0])
        elif kind == "data":
            who, payload, topic = args
            if who == "stranger":
                room.join("stranger")
            packet = rtc.DataPacket(
                data=payload,
                kind=rtc.DataPacketKind.KIND_RELIABLE,
                participant=room.remote_participants[who],
                topic=topic,
            )
            room.emit("data_received", packet)
            if who == "stranger":
                room.leave("stranger")
        elif kind == "rpc":
            caller, method, payload = args
            answer, error = await rpc(room, caller, method, payload)
            assert json.loads(answer)["ok"] is True if error is None else error.message
        else:
            identity, participant_kind, metadata, attrs = args
            if identity in room.remote_participants or identity == "agent-clara":
                return
            room.join(identity, kind=participant_kind, metadata=metadata, attributes=attrs)
            await settle()
            room.leave(identity)
        await self.settled()
        # the fakes' own records of what they were asked (not the service's memory)
        self.factory.started = self.factory.open_pipelines
        self.room.local_participant.attribute_writes.clear()
        self.room.local_participant.published.clear()

    def quiesce(self) -> None:
        """Let the outbox deliver what it holds (records in flight are not a leak)."""
        recorder = self.agent.conversation.recorder
        assert recorder is not None

        async def delivered() -> None:
            async with asyncio.timeout(10):
                await outbox_drained(recorder.outbox)

        self.runner.run(delivered())

    def close(self) -> None:
        self.runner.run(self.agent.aclose())


def test_fuzz_the_room_surface(tmp_path: Path) -> None:
    with asyncio.Runner() as runner:
        arena = Arena(runner, tmp_path / "data")
        watch = Watch(runner, SURFACE.max_examples, quiesce=arena.quiesce, fill=arena.fill)

        @SURFACE
        @given(operation=operations)
        def example(operation: tuple[Any, ...]) -> None:
            runner.run(arena.apply(operation))
            watch.example()
            watch.check()
            assert arena.session_state("bob") == arena.bob_state
            alice = arena.session_state("alice")
            assert alice["state"] == "connected" and not alice["closed"]
            assert arena.agent.error_count == 0

        try:
            with watch:
                example()
                watch.check_memory()
        finally:
            arena.close()
