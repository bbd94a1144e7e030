"""SyncPublisher: what session sync sends to the room.

Two kinds of things go out: events on the ``clara.sync`` data topic, each to its session's
owner only (reliable, in order, from one owned task), and each session's config as the
agent attribute ``clara.session.<identity>``, through the room's one attribute writer
(:class:`~clara_voice.voice.attributes.AgentAttributes`: coalesced, only what changed,
within the attribute budget). Room handlers stay synchronous: they queue, the task
publishes. While the agent's own link is down the queue waits (at most
``MAX_QUEUED_EVENTS`` events, the oldest dropped first) and goes out once it is back.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from livekit import rtc
from livekit.agents.utils import aio

from clara_voice.logging import ContextLogger
from clara_voice.sync.protocol import (
    SESSION_ATTRIBUTE_PREFIX,
    SYNC_TOPIC,
    SessionConfig,
    SyncEventType,
    encode,
    sync_event,
)
from clara_voice.telemetry import ErrorSource
from clara_voice.voice.attributes import AgentAttributes

MAX_QUEUED_EVENTS = 256


class SyncPublisher:
    """Queues sync events and publishes them in order; sets session attributes."""

    def __init__(
        self,
        room: rtc.Room,
        attributes: AgentAttributes,
        *,
        log: ContextLogger,
        count_error: Callable[[ErrorSource], None],
        rejected: Counter[str],
    ) -> None:
        self._room = room
        self._attributes = attributes
        self._log = log
        self._count_error = count_error
        self._rejected = rejected
        self._events: deque[tuple[str, str]] = deque(maxlen=MAX_QUEUED_EVENTS)
        self._encoded: dict[str, tuple[tuple[Any, ...], str]] = {}
        self._link_up = asyncio.Event()
        self._link_up.set()
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._publish_atask: asyncio.Task[None] | None = None
        self.events_sent: Counter[str] = Counter()

    @property
    def queued(self) -> int:
        return len(self._events)

    def start(self) -> None:
        if self._publish_atask is None:
            self._publish_atask = asyncio.create_task(self._run(), name="clara.sync.publish")

    async def aclose(self) -> None:
        """Stop publishing and forget what is queued; safe to call twice."""
        if self._publish_atask is not None:
            await aio.cancel_and_wait(self._publish_atask)
        self._events.clear()
        self._encoded.clear()
        self._drained.set()

    def link(self, *, up: bool) -> None:
        """The agent's own link went up or down: publishing goes on or waits."""
        self._attributes.link(up=up)
        if up:
            self._link_up.set()
            self._wakeup.set()
        else:
            self._link_up.clear()

    def send(
        self,
        event_type: SyncEventType,
        *,
        session_id: str,
        identity: str,
        config: SessionConfig,
        trigger: str,
        room_state: Mapping[str, Any] | None = None,
        issues: list[str] | None = None,
    ) -> None:
        """Send a ``clara.sync`` event about ``identity``'s session to it only, and publish
        its config."""
        message = sync_event(
            event_type,
            session_id=session_id,
            participant=identity,
            config=config,
            trigger=trigger,
            room_state=room_state,
            issues=issues,
            at=config.last_sync_at,
        )
        self._events.append((identity, encode(message)))
        self.events_sent[event_type] += 1
        self._drained.clear()
        self._wakeup.set()
        self.config(identity, config)

    def config(self, identity: str, config: SessionConfig) -> None:
        """Publish ``identity``'s config as its ``clara.session.<identity>`` attribute."""
        fingerprint = config.fingerprint()
        cached = self._encoded.get(identity)
        if cached is None or cached[0] != fingerprint:  # encoded once per change, not per round
            cached = self._encoded[identity] = (fingerprint, encode(config.to_json()))
        self.attribute(identity, cached[1])

    def attribute(self, identity: str, value: str) -> None:
        """Set ``clara.session.<identity>`` to ``value`` ("" removes it)."""
        if not value:
            self._encoded.pop(identity, None)
        if not self._attributes.set(SESSION_ATTRIBUTE_PREFIX + identity, value):
            self._rejected["attribute_budget"] += 1

    async def drain(self) -> None:
        """Wait until everything queued has been published (callers bound the wait)."""
        while not self._drained.is_set():
            await self._drained.wait()
        await self._attributes.drain()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._link_up.wait()
            while self._events:
                identity, payload = self._events.popleft()
                await self._guard(
                    self._room.local_participant.publish_data(
                        payload, reliable=True, destination_identities=[identity], topic=SYNC_TOPIC
                    ),
                    "sync event",
                )
            if not self._events and not self._wakeup.is_set():
                self._drained.set()

    async def _guard(self, publish: Coroutine[Any, Any, None], what: str) -> bool:
        try:
            await publish
        except Exception as exc:
            self._count_error("session")
            self._log.warning(f"failed to publish {what}", exc_info=exc)
            return False
        return True


__all__ = ["MAX_QUEUED_EVENTS", "SyncPublisher"]
