"""Fuzz: chat text streams and push-to-talk calls, through the room's routers.

Alice is poked by every example; bob is a bystander whose handler and session must never
see a thing. Each chat message is heard whole by its sender's handler, or refused with a
notice to its sender (too long, or too many), or dropped (no session, nothing but blanks);
a long one is never read past the limit. Each push-to-talk call acts on the caller's own
session or is refused with a coded error. Nothing escapes; memory stays flat.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from livekit import rtc

from clara_voice._ratelimit import RateLimits
from clara_voice.logging import get_logger
from clara_voice.voice.notices import NOTICE_TOPIC, Notices
from clara_voice.voice.routing import (
    CHAT_BURST,
    CHAT_PER_SECOND,
    MAX_CHAT_TEXT,
    PTT_BURST,
    PTT_METHODS,
    PTT_PER_SECOND,
    ChatRouter,
    PushToTalk,
)
from clara_voice.voice.streams import StreamDispatch
from testkit.fakes import FakeRoom, FakeTextStreamReader
from tests.fuzz.conftest import Watch, budget, deeply_nested, long_texts, texts

LOG = get_logger("clara_voice.voice", room="fuzz-room")
CHAT = budget("chat")
PTT = budget("push_to_talk")

senders = st.one_of(st.sampled_from(["alice", "mallory", ""]), texts(max_size=12)).filter(
    lambda identity: identity != "bob"  # the bystander
)
chat_texts = st.one_of(
    texts(max_size=200),
    long_texts(),
    st.sampled_from(["", " ", "\n\t ", "x" * MAX_CHAT_TEXT, "x" * (MAX_CHAT_TEXT + 1)]),
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ChatArena:
    def __init__(self) -> None:
        self.room = FakeRoom("fuzz-room")
        self.clock = Clock()
        self.notices = Notices(self.room, LOG, clock=self.clock)
        self.streams = StreamDispatch(self.room, refusals=self.notices.refusals)
        self.router = ChatRouter(self.streams, self.notices, LOG)
        self.router._limits = RateLimits(
            capacity=CHAT_BURST, rate=CHAT_PER_SECOND, clock=self.clock
        )
        self.heard: dict[str, list[str]] = {"alice": [], "bob": []}
        for identity in self.heard:
            self.router.add(identity, self._handler(identity))

    def _handler(self, identity: str) -> Any:
        async def handler(text: str) -> None:
            self.heard[identity].append(text)

        return handler

    def sent_notices(self) -> list[tuple[list[str], dict[str, Any]]]:
        sent = [(to, json.loads(p)) for topic, p, to in self.room.local_participant.published]
        assert all(topic == NOTICE_TOPIC for topic, _, _ in self.room.local_participant.published)
        self.room.local_participant.published.clear()
        return sent

    async def send(self, sender: str, text: str, declare_size: bool) -> FakeTextStreamReader:
        reader = self.room.send_text(sender, text, declare_size=declare_size)
        async with asyncio.timeout(5):
            while self.router._tasks or self.notices._tasks:
                await asyncio.wait(set(self.router._tasks) | set(self.notices._tasks))
        return reader


def test_fuzz_chat_text_streams() -> None:
    with asyncio.Runner() as runner:
        arena = ChatArena()
        watch = Watch(runner, CHAT.max_examples)

        @CHAT
        @given(sender=senders, text=chat_texts, declare_size=st.booleans(), refill=st.booleans())
        def example(sender: str, text: str, declare_size: bool, refill: bool) -> None:
            arena.clock.now += 10.0 if refill else 0.0
            reader = runner.run(arena.send(sender, text, declare_size))
            watch.example()
            watch.check()
            assert reader.closed  # read to its end, or refused and closed unread
            assert arena.streams.open_readers() == 0
            notices = arena.sent_notices()
            heard, arena.heard["alice"] = arena.heard["alice"], []  # the test's, not a leak
            assert arena.heard["bob"] == []
            if sender != "alice":
                assert heard == [] and notices == []
                return
            if heard:
                assert heard == [text] and len(text) <= MAX_CHAT_TEXT and text.strip()
                assert notices == []
                return
            if notices:
                [(to, notice)] = notices
                assert to == ["alice"]
                assert notice["v"] == 1 and notice["type"] == "refused"
                assert notice["input"] == "lk.chat" and notice["message"]
                assert notice["error"] in {"rate_limited", "too_long"}
                if notice["error"] == "too_long":
                    assert len(text) > MAX_CHAT_TEXT
                    # never read past the limit
                    chunks = math.ceil(MAX_CHAT_TEXT / reader.CHUNK) + 1
                    assert reader.chunks_read <= chunks
                else:
                    assert not refill  # a full bucket admits the message
                return
            assert not text.strip()  # nothing said: nothing to answer

        try:
            with watch:
                example()
                watch.check_memory()
        finally:
            runner.run(arena.router.aclose())
            runner.run(arena.notices.aclose())


class _Input:
    def __init__(self) -> None:
        self.audio_enabled: bool | None = None

    def set_audio_enabled(self, enabled: bool) -> None:
        self.audio_enabled = enabled


class StubSession:
    """The part of an AgentSession push-to-talk drives, counting what it was asked."""

    def __init__(self) -> None:
        self.input = _Input()
        self.calls: list[str] = []
        self.uninterruptible = False

    def interrupt(self) -> None:
        self.calls.append("interrupt")
        if self.uninterruptible:
            raise RuntimeError("the current speech is not interruptible")

    def clear_user_turn(self) -> None:
        self.calls.append("clear")

    def commit_user_turn(self) -> None:
        self.calls.append("commit")


async def rpc(
    room: FakeRoom, caller: str, method: str, payload: str
) -> tuple[str | None, rtc.RpcError | None]:
    """The answer to ``caller``'s call, or the RpcError it got (anything else escapes)."""
    try:
        return await room.local_participant.call_rpc(caller, method, payload), None
    except rtc.RpcError as error:
        return None, error


def test_fuzz_push_to_talk_calls() -> None:
    with asyncio.Runner() as runner:
        room = FakeRoom("fuzz-room")
        clock = Clock()
        ptt = PushToTalk(room.local_participant, Notices(room, LOG).refusals)
        ptt._limits = RateLimits(capacity=PTT_BURST, rate=PTT_PER_SECOND, clock=clock)
        alice, bob = StubSession(), StubSession()
        ptt.add("alice", alice)  # type: ignore[arg-type]
        ptt.add("bob", bob)  # type: ignore[arg-type]
        bob_before = (list(bob.calls), bob.input.audio_enabled)
        watch = Watch(runner, PTT.max_examples)

        @PTT
        @given(
            caller=senders,
            method=st.one_of(st.sampled_from(PTT_METHODS), texts(max_size=20)),
            payload=st.one_of(texts(max_size=50), st.just(deeply_nested(2000))),
            refill=st.booleans(),
            uninterruptible=st.booleans(),
        )
        def example(
            caller: str, method: str, payload: str, refill: bool, uninterruptible: bool
        ) -> None:
            clock.now += 10.0 if refill else 0.0
            alice.uninterruptible = uninterruptible
            calls = len(alice.calls)
            answer, error = runner.run(rpc(room, caller, method, payload))
            if error is not None and method not in PTT_METHODS:
                assert error.code == rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD
            elif error is not None:
                code = json.loads(error.data or "")["error"]
                expected = {"no_session"} if caller != "alice" else set()
                if caller == "alice":
                    expected = {"not_interruptible"} if uninterruptible else set()
                    expected |= set() if refill else {"rate_limited"}
                assert code in expected
            watch.example()
            watch.check()
            assert (bob.calls, bob.input.audio_enabled) == bob_before
            if answer is not None:
                assert caller == "alice"
                assert json.loads(answer) == {"ok": True, "method": method}
            else:
                assert alice.calls[calls:] in ([], ["interrupt"])  # nothing past a refusal

        try:
            with watch:
                example()
                watch.check_memory()
        finally:
            ptt.close()
