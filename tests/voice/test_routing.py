"""The room's chat and push-to-talk routing: bounded, rate-limited, refused out loud."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from livekit import rtc

from clara_voice.logging import get_logger
from clara_voice.voice.notices import LOG_BURST, NOTICE_TOPIC, Notices
from clara_voice.voice.routing import (
    CHAT_BURST,
    MAX_CHAT_TEXT,
    PTT_BURST,
    RPC_START_TURN,
    ChatRouter,
    PushToTalk,
)
from clara_voice.voice.streams import StreamDispatch
from testkit.fakes import FakeRoom
from testkit.pipeline import running_harness, until
from testkit.tasks import other_tasks

LOG = get_logger("clara_voice.voice", room="test-room")


def notices(room: FakeRoom, identity: str) -> list[dict[str, Any]]:
    return [
        json.loads(payload)
        for topic, payload, to in room.local_participant.published
        if topic == NOTICE_TOPIC and to == [identity]
    ]


@pytest.fixture
async def chat(room: FakeRoom) -> Any:
    notices = Notices(room, LOG)
    router = ChatRouter(StreamDispatch(room, refusals=notices.refusals), notices, LOG)
    heard: dict[str, list[str]] = {"alice": [], "bob": []}
    for identity, texts in heard.items():

        async def handler(text: str, texts: list[str] = texts) -> None:
            texts.append(text)

        router.add(identity, handler)
    yield router, heard
    await router.aclose()
    await notices.aclose()
    assert room.text_stream_handlers == {}


async def settle_router() -> None:
    async with asyncio.timeout(2):
        while pending := [
            t
            for t in other_tasks()
            if "ChatRouter" in repr(t.get_coro()) or t.get_name() == "clara.notice"
        ]:
            await asyncio.wait(pending)


async def test_an_oversized_chat_message_is_not_read_past_the_limit(
    room: FakeRoom, chat: Any
) -> None:
    """Regression: ``lk.chat`` messages were read whole before the 8,000-character check."""
    _, heard = chat
    declared = room.send_text("alice", "x" * 100_000)  # the sender declared its size
    unknown = room.send_text("alice", "y" * 100_000, declare_size=False)
    await settle_router()

    assert declared.chunks_read == 0  # refused from its header alone
    assert unknown.chunks_read * unknown.CHUNK <= MAX_CHAT_TEXT + unknown.CHUNK
    assert declared.closed and unknown.closed  # and closed: nothing more is kept
    assert heard["alice"] == []
    refused = notices(room, "alice")
    assert [n["error"] for n in refused] == ["too_long", "too_long"]
    assert refused[0]["input"] == "lk.chat" and refused[0]["v"] == 1
    room.send_text("alice", "z" * MAX_CHAT_TEXT)  # exactly the limit is fine
    await settle_router()
    assert heard["alice"] == ["z" * MAX_CHAT_TEXT]


async def test_a_chat_flood_is_refused_per_sender_and_says_so(room: FakeRoom, chat: Any) -> None:
    """Regression: chat messages had no rate limit (each interrupts, and costs an LLM and a
    TTS call)."""
    _, heard = chat
    for n in range(int(CHAT_BURST) + 3):
        room.send_text("alice", f"message {n}")
    room.send_text("bob", "hello")
    await settle_router()

    assert len(heard["alice"]) == CHAT_BURST
    assert [n["error"] for n in notices(room, "alice")] == ["rate_limited"] * 3
    assert heard["bob"] == ["hello"]  # another sender is not affected
    assert notices(room, "bob") == []


class _Input:
    def __init__(self) -> None:
        self.audio_enabled = False

    def set_audio_enabled(self, enabled: bool) -> None:
        self.audio_enabled = enabled


class _Session:
    """The part of an AgentSession push-to-talk drives."""

    def __init__(self) -> None:
        self.input = _Input()

    def interrupt(self) -> None:
        pass

    def clear_user_turn(self) -> None:
        pass


async def test_a_push_to_talk_flood_is_refused_with_a_coded_error(room: FakeRoom) -> None:
    """Regression: push-to-talk RPCs had no rate limit."""
    ptt = PushToTalk(room.local_participant, Notices(room, LOG).refusals)
    ptt.add("alice", _Session())  # type: ignore[arg-type]
    for _ in range(int(PTT_BURST)):
        await room.local_participant.call_rpc("alice", RPC_START_TURN)
    with pytest.raises(rtc.RpcError) as refused:
        await room.local_participant.call_rpc("alice", RPC_START_TURN)
    assert json.loads(refused.value.data or "")["error"] == "rate_limited"
    ptt.close()


async def test_the_routers_log_with_the_rooms_logger_not_a_participants(
    room: FakeRoom, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the chat and push-to-talk routers were made with the first
    participant's logger, so their lines carried that participant's session id."""
    caplog.set_level(logging.WARNING)
    async with running_harness(room, tmp_path / "data") as harness:
        alice = await harness.join("alice")
        await harness.join("bob")
        harness.room.send_text("bob", "b" * (MAX_CHAT_TEXT + 1))
        await until(
            lambda: [r for r in caplog.records if r.getMessage() == "chat text refused"],
            timeout=5,
            what="the refusal",
        )
        (line,) = [r for r in caplog.records if r.getMessage() == "chat text refused"]
        assert line.participant == "bob"  # type: ignore[attr-defined]
        assert getattr(line, "session_id", None) != alice.session_id


async def test_chat_from_a_participant_without_a_session_is_closed_unread(
    room: FakeRoom, chat: Any
) -> None:
    """Regression (issue 16, item 4): chat from a sender without a session, or over its
    rate limit, was ignored but its reader left open (subscribed to every FFI event)."""
    stranger = room.send_text("mallory", "hello")
    flood = [room.send_text("alice", f"m{n}") for n in range(int(CHAT_BURST) + 2)]
    await settle_router()
    assert stranger.closed and stranger.chunks_read == 0
    assert all(reader.closed for reader in flood)
    assert all(reader.chunks_read == 0 for reader in flood[int(CHAT_BURST) :])


async def test_refusals_are_rate_limited_in_the_log_and_in_notices(
    room: FakeRoom, chat: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression (issue 16, item 4): every refusal was a log line and a notice, so a flood
    of refusals was a flood of both."""
    caplog.set_level(logging.WARNING, logger="clara_voice")
    for n in range(500):
        room.send_text("alice", f"m{n}")
    await settle_router()

    lines = [r for r in caplog.records if r.getMessage() == "chat text refused"]
    assert len(lines) <= LOG_BURST + 2
    assert len(notices(room, "alice")) <= 10
