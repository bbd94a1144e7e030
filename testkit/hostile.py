"""A hostile participant: floods every input a client controls, for a bounded time.

:class:`Hostile` joins a room of the real server as an ordinary participant (a token any
backend could mint, attribute updates allowed) and, until ``duration`` seconds have passed,
sends at once, each at a bounded rate:

- chat on ``lk.chat``: oversized messages (100 KB) and a stream of short ones;
- byte streams on every topic it can think of (livekit's pre-connect audio, ``lk.chat``,
  ``lk.transcription``, ``clara.sync``, made-up ones), each 64 KB;
- RPC calls to the agent: the push-to-talk methods, ``clara.set_session_type`` with junk,
  methods that do not exist;
- changes of its ``clara.session_type`` attribute, to valid and invalid values;
- join/leave cycles of fresh identities (``<identity>-<n>``), one at a time.

It counts what it sent and what it got back (``clara.notice`` refusals, RPC errors by
code) in :attr:`Hostile.tally`. Everything stops by itself at the deadline; :meth:`run`
returns when every sender has stopped and every extra connection has left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from livekit import rtc

from testkit.human import Human
from testkit.livekit_server import LiveKitServer

TOPICS = (
    "lk.agent.pre-connect-audio-buffer",
    "lk.chat",
    "lk.transcription",
    "clara.sync",
    "clara.notice",
    "x.made.up",
)
RPC_CALLS = (
    ("clara.start_turn", ""),
    ("clara.end_turn", ""),
    ("clara.cancel_turn", ""),
    ("clara.set_session_type", '{"type": "voice-ptt"}'),
    ("clara.set_session_type", '{"type": "video"}'),
    ("clara.set_session_type", "[" * 500),
    ("clara.does_not_exist", "hello"),
)
SESSION_TYPES = ("text", "voice-ptt", "voice-vad", "VIDEO", "x" * 2000)
BIG_CHAT = "x" * 100_000
ACTIONS = frozenset({"chat", "bytes", "rpc", "attributes", "joins"})
"""What the participant floods: all of it unless told."""
BYTES = b"\x00" * 65_536


class Hostile:
    """One hostile participant and its fresh identities; see the module docstring."""

    def __init__(
        self,
        server: LiveKitServer,
        room: str,
        identity: str = "mallory",
        *,
        duration: float = 60.0,
        seed: int = 7,
        actions: frozenset[str] = ACTIONS,
    ) -> None:
        self.server = server
        self.room = room
        self.identity = identity
        self.duration = duration
        self.person = Human(
            server, room, identity, session_type="text", can_update_own_metadata=True
        )
        self.tally: Counter[str] = Counter()
        self.actions = actions
        self._random = random.Random(seed)
        self._deadline = 0.0

    async def run(self) -> Counter[str]:
        """Join, flood for ``duration`` seconds, leave; the tally."""
        await self.person.join(microphone=False)
        self._deadline = time.monotonic() + self.duration
        try:
            senders = {
                "chat": (0.05, self._chat),
                "bytes": (0.1, self._bytes),
                "rpc": (0.1, self._rpc),
                "attributes": (0.2, self._attributes),
                "joins": (1.0, self._cycle),
            }
            await asyncio.gather(
                *(self._every(*sender) for name, sender in senders.items() if name in self.actions)
            )
        finally:
            await self.person.leave()
        self.tally["notices"] = len(self.person.notices)
        for notice in self.person.notices:
            self.tally[f"notice.{notice.get('error')}"] += 1
        return self.tally

    async def _every(self, period: float, act: Callable[[int], Awaitable[None]]) -> None:
        n = 0
        while (left := self._deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(max(left, 0.1) + 5.0):
                    await act(n)
            except (rtc.RpcError, ConnectionError, TimeoutError, RuntimeError) as exc:
                self.tally[f"failed.{type(exc).__name__}"] += 1
            n += 1
            await asyncio.sleep(period)

    async def _chat(self, n: int) -> None:
        await self.person.chat(BIG_CHAT if n % 4 == 0 else f"flood {n}")
        self.tally["chat"] += 1

    async def _bytes(self, n: int) -> None:
        topic = TOPICS[n % len(TOPICS)]
        attributes = {"trackId": "TR_fake", "sampleRate": "48000", "channels": "1"}
        writer = await self.person.room.local_participant.stream_bytes(
            f"junk-{n}", topic=topic, attributes=attributes
        )
        await writer.write(BYTES)
        await writer.aclose()
        self.tally["bytes"] += 1

    async def _rpc(self, n: int) -> None:
        method, payload = RPC_CALLS[n % len(RPC_CALLS)]
        self.tally["rpc"] += 1
        try:
            await self.person.rpc(method, payload, timeout=3.0)
        except rtc.RpcError as error:
            code: Any = error.code
            with contextlib.suppress(ValueError, TypeError):
                code = json.loads(error.data or "").get("error", code)
            self.tally[f"rpc.{code}"] += 1

    async def _attributes(self, n: int) -> None:
        value = self._random.choice(SESSION_TYPES)
        await self.person.set_attributes({"clara.session_type": value})
        self.tally["attributes"] += 1

    async def _cycle(self, n: int) -> None:
        other = Human(self.server, self.room, f"{self.identity}-{n}")
        try:
            await other.join(microphone=False, wait_agent=False)
            self.tally["joins"] += 1
            await asyncio.sleep(0.5)
        finally:
            await other.leave()


# -- the other person in the room ------------------------------------------------------


def reply(request: dict[str, Any]) -> str:
    """The loopback LLM's answers: Alice's question ``n`` gets "Answer n for Alice.";
    anyone else gets another reply."""
    said = [str(m["content"]) for m in request["messages"] if m["role"] == "user"]
    last = said[-1] if said else ""
    if last.startswith("alice question"):
        return f"Answer {last.rsplit(' ', 1)[-1]} for Alice."
    return "A reply for someone else."


async def alice_turn(alice: Human, n: int) -> float:
    """Alice asks question ``n`` (the loopback STT must transcribe it "alice question n");
    the time from her end of speech to Clara's voice, once Clara's words arrived too."""
    utterance = alice.say(f"Alice question {n}")
    await alice.wait_until(utterance.ended.is_set, "the utterance was sent")
    assert utterance.ended_at is not None
    heard_at: float = await alice.wait_until(
        lambda: alice.agent_sound_after(utterance.ended_at or 0.0), f"the reply {n}", timeout=40
    )
    await alice.wait_until(
        lambda: [t for t in alice.agent_transcripts() if t.text == f"Answer {n} for Alice."],
        f"the words of reply {n}",
        timeout=40,
    )
    return heard_at - utterance.ended_at


async def talk_through(
    alice: Human, hostile: Hostile, first: int
) -> tuple[list[float], Counter[str]]:
    """Alice's turns (numbered from ``first``), one after another while ``hostile`` floods
    the room: their reply latencies, and the hostile participant's tally."""
    flood = asyncio.create_task(hostile.run())
    during: list[float] = []
    n = first
    while not flood.done():
        during.append(await alice_turn(alice, n))
        n += 1
    return during, await flood


__all__ = ["ACTIONS", "Hostile", "alice_turn", "reply", "talk_through"]
