"""Session synchronization (seed 003): the agent's view of each session, kept in step with
the room and published to it.

Owned by ClaraVoiceAgent. For every ParticipantSession it keeps a
:class:`~clara_voice._sync_protocol.SessionConfig` (type, state, turn detection…) and:

- follows the session's connection_state (the agent calls :meth:`SessionSync.state_changed`
  from its one transition function): connecting → ``idle``, connected → ``active``,
  reconnecting → ``syncing``, error → ``error``, closed → ``ending``;
- applies change requests of the session's type from its owner, through the
  ``clara.session_type`` attribute or the ``clara.set_session_type`` RPC, rate-limited per
  participant, by calling the session's ``pipeline.set_session_type``. The owned
  :class:`~clara_voice._sync_requests.ChangeRequests` admits, checks and applies them on
  the records kept here; SessionSync registers its handlers and publishes the outcome;
- validates every session against the room every ``CLARA_SYNC_INTERVAL`` seconds and on
  room events, correcting what drifted and flagging a voice session without a microphone;
- publishes each config as the agent attribute ``clara.session.<identity>`` and each change
  as an event on the ``clara.sync`` data topic, from one owned task so that room handlers
  stay synchronous. While the agent's own link is down, publishing waits.

The wire format is in :mod:`clara_voice._sync_protocol` and the README's "Client protocol" section.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from livekit import rtc
from livekit.agents.utils import aio

from clara_voice.agent.session import ConnectionState, ParticipantSession
from clara_voice.config import SessionType, Settings
from clara_voice.logging import ContextLogger
from clara_voice.sync.protocol import (
    MAX_ATTRIBUTES_BYTES,
    RPC_SET_SESSION_TYPE,
    SESSION_ATTRIBUTE_PREFIX,
    STATE_OF,
    SYNC_TOPIC,
    Microphone,
    SessionConfig,
    SyncEventType,
    encode,
    sync_event,
)
from clara_voice.sync.requests import ChangeRequests
from clara_voice.telemetry import ErrorSource
from clara_voice.voice.turns import expected_effective

DEFAULT_SYNC_INTERVAL = 5.0
MAX_QUEUED_EVENTS = 256
FLUSH_TIMEOUT = 2.0
"""Seconds ``aclose`` waits for queued events to be published."""
# audio input is live state (a push-to-talk session hears only during a turn): not compared
_COMPARED = ("session_type", "turn_detection", "voice_activity_enabled", "audio_output_enabled")
RoomLink = Literal["connected", "reconnecting", "disconnected"]


class SyncHost(Protocol):
    """What SessionSync needs of its agent (ClaraVoiceAgent provides it)."""

    @property
    def room(self) -> rtc.Room: ...

    @property
    def sessions(self) -> dict[str, ParticipantSession]: ...

    def session_of(self, identity: str) -> ParticipantSession | None: ...

    def count_error(self, source: ErrorSource) -> None: ...


@dataclass(eq=False)
class _Record:
    config: SessionConfig
    flags: frozenset[str] = frozenset()
    pending_type: SessionType | None = None


class SessionSync:
    """Keeps, validates and publishes a SessionConfig per session of one agent."""

    def __init__(
        self,
        host: SyncHost,
        settings: Settings,
        *,
        log: ContextLogger,
        interval: float | None = None,
        attribute_interval: float = 0.5,
        rate_capacity: float = 5.0,
        rate_per_second: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._host = host
        self._room = host.room
        self._log = log
        self._interval = interval if interval is not None else settings.sync_interval
        self._attribute_interval = attribute_interval
        self._records: dict[str, _Record] = {}
        self._link: RoomLink = "connected"
        self._link_up = asyncio.Event()
        self._link_up.set()
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._events: deque[tuple[str, str]] = deque(maxlen=MAX_QUEUED_EVENTS)
        self._dirty: dict[str, str] = {}
        self._attribute_sizes: dict[str, int] = {}
        self._last_attribute_write = -float("inf")
        self._publish_atask: asyncio.Task[None] | None = None
        self._validate_atask: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self.rejected: Counter[str] = Counter()
        """Change requests refused or ignored, by reason (client mistakes, not agent errors)."""
        self.corrections = 0
        self.events_sent: Counter[str] = Counter()
        self._requests = ChangeRequests(
            host=host,
            log=log,
            rejected=self.rejected,
            record=self._record,
            record_of=self._records.get,
            type_changed=self._type_changed,
            rate_capacity=rate_capacity,
            rate_per_second=rate_per_second,
            clock=clock,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Follow the room, answer the RPC, start validating and publishing; idempotent."""
        if self._started or self._closed:
            return
        self._started = True
        room = self._room
        for event, handler in self._handlers().items():
            room.on(event, handler)
        room.local_participant.register_rpc_method(RPC_SET_SESSION_TYPE, self._requests.on_rpc)
        self._publish_atask = asyncio.create_task(self._publish_loop(), name="clara.sync.publish")
        self._validate_atask = asyncio.create_task(
            self._validate_loop(), name="clara.sync.validate"
        )
        for session in list(self._host.sessions.values()):
            self.session_created(session)

    async def aclose(self) -> None:
        """Undo :meth:`start`: handlers, RPC method, tasks; safe to call twice.

        What is still queued (the last ``ending`` events of the sessions the agent just
        closed) is published first while the agent's link is up, for at most
        ``FLUSH_TIMEOUT`` seconds.
        """
        if self._closed:
            return
        self._closed = True
        if self._started:
            for event, handler in self._handlers().items():
                self._room.off(event, handler)
            self._room.local_participant.unregister_rpc_method(RPC_SET_SESSION_TYPE)
            if self._link == "connected" and self._room.isconnected():
                try:
                    await asyncio.wait_for(self.drain(), FLUSH_TIMEOUT)
                except TimeoutError:
                    self._log.warning(
                        "sync events not all published before closing",
                        extra={"queued": len(self._events)},
                    )
        tasks = [t for t in (self._validate_atask, self._publish_atask) if t is not None]
        await aio.cancel_and_wait(*tasks)
        self._records.clear()
        self._requests.clear()
        self._events.clear()
        self._dirty.clear()
        self._drained.set()

    async def __aenter__(self) -> SessionSync:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def _handlers(self) -> dict[rtc.room.EventTypes, Callable[..., None]]:
        # bound methods compare equal, so room.off finds the ones room.on registered
        return {
            "participant_attributes_changed": self._on_attributes_changed,
            "track_published": self._on_track_published,
            "track_unpublished": self._on_track_unpublished,
            "track_muted": self._on_track_muted,
            "track_unmuted": self._on_track_unmuted,
            "reconnecting": self._on_room_reconnecting,
            "reconnected": self._on_room_reconnected,
            "disconnected": self._on_room_disconnected,
            "room_updated": self._on_room_updated,
            "moved": self._on_room_updated,
        }

    # -- what the agent tells us -----------------------------------------------------------

    def config_of(self, session_id: str) -> SessionConfig | None:
        """The agent's view of a session (``None`` once it ended)."""
        record = self._records.get(session_id)
        return None if record is None else record.config

    def session_created(self, session: ParticipantSession) -> None:
        """Start keeping a config for ``session`` (also done lazily on its first transition)."""
        self._record(session)

    def state_changed(
        self,
        session: ParticipantSession,
        old: ConnectionState,
        new: ConnectionState,
        *,
        reason: str,
    ) -> None:
        """The agent moved ``session``'s connection_state; called from its transition()."""
        if self._closed:
            return
        record = self._record(session, state=old)
        config = record.config
        state = STATE_OF[new]
        previous = config.state
        config.state = state
        if new == "closed":
            self._emit("session_state_sync", session, record, trigger=reason)
            self._forget(session)
            return
        if state == "active" and config.started_at is None:
            config.started_at = datetime.now(UTC)
            config.retype(session.session_type)  # the pipeline resolved the type at start
        if state == "syncing":
            self._emit("connection_interruption", session, record, trigger=reason)
        else:
            self._emit("session_state_sync", session, record, trigger=reason)
        if state == "active":
            if previous == "syncing":
                self._validate(session, record, trigger="reconnected")
            pending, record.pending_type = record.pending_type, None
            if pending is not None and pending != session.session_type:
                self._requests.apply_quietly(session, pending, "attribute")

    def _record(
        self, session: ParticipantSession, *, state: ConnectionState | None = None
    ) -> _Record:
        record = self._records.get(session.session_id)
        if record is None:
            config = SessionConfig(
                type=session.session_type,
                room_id=self._room.name,
                state=STATE_OF[state or session.connection_state],
            )
            record = self._records[session.session_id] = _Record(config)
            if not self._closed:
                self._emit("session_state_sync", session, record, trigger="session created")
        return record

    def _forget(self, session: ParticipantSession) -> None:
        self._records.pop(session.session_id, None)
        self._requests.forget(session.participant_id)
        if self._host.session_of(session.participant_id) is None:
            self._set_attribute(session.participant_id, "")

    # -- validation ------------------------------------------------------------------------

    def validate(self, *, trigger: str = "validation") -> None:
        """Check every session against the room now (the periodic round does this)."""
        for session in list(self._host.sessions.values()):
            if session.connection_state == "closed":
                continue
            self._validate(session, self._record(session), trigger=trigger)

    def _validate(self, session: ParticipantSession, record: _Record, *, trigger: str) -> None:
        config = record.config
        room = self._room
        issues: list[str] = []
        corrected = False
        present = session.participant_id in room.remote_participants
        expected = STATE_OF[session.connection_state]
        if expected == "active" and self._link == "disconnected":
            expected, issue = "error", "room_disconnected"
        elif expected == "active" and not present:
            expected, issue = "error", "participant_gone"
        else:
            issue = "state_mismatch"
        if config.state != expected:
            issues.append(issue)
            config.state = expected
            corrected = True
        if config.room_id != room.name:
            issues.append("room_id_mismatch")
            config.room_id = room.name
            corrected = True
        if config.type != session.session_type:
            issues.append("type_mismatch")
            config.retype(session.session_type)
            corrected = True
        reference = SessionConfig(type=config.type, room_id=config.room_id)
        if (config.turn_detection, config.voice_mode, config.voice_activity_enabled) != (
            reference.turn_detection,
            reference.voice_mode,
            reference.voice_activity_enabled,
        ):
            issues.append("turn_detection_mismatch")
            config.retype(config.type)
            corrected = True

        microphone = self._microphone(session.participant_id)
        flags: set[str] = set()
        if self._pipeline_drifted(session, config):
            flags.add("pipeline_mismatch")
        if config.is_voice:
            config.is_muted = microphone != "unmuted"
            if config.state == "active" and microphone != "unmuted":
                flags.add(f"microphone_{microphone}")
        new_flags = flags - record.flags
        record.flags = frozenset(flags)
        issues.extend(sorted(new_flags))

        if corrected:
            config.sync_attempts += 1
            self.corrections += 1
        if issues:
            config.inconsistency_detected = True
            session.log.warning(
                "session inconsistent with the room",
                extra={"issues": issues, "corrected": corrected, "trigger": trigger},
            )
            self._emit(
                "session_inconsistency",
                session,
                record,
                trigger=trigger,
                room_state=self._room_state(session, microphone, present),
                issues=issues,
            )
        elif config.inconsistency_detected and not flags:
            config.inconsistency_detected = False
            self._emit("session_state_sync", session, record, trigger=f"{trigger}: consistent")
        else:
            self._publish_config(session, record)

    def _pipeline_drifted(self, session: ParticipantSession, config: SessionConfig) -> bool:
        """Whether the pipeline does something else than the config's type says (the agent
        cannot force it back: it is flagged, and logged, for a person to look at)."""
        if session.pipeline is None or session.connection_state != "connected":
            return False
        try:
            effective = session.pipeline.effective()
        except Exception as exc:
            self._host.count_error("session")
            session.log.warning("failed to read the pipeline's state", exc_info=exc)
            return False
        expected = expected_effective(config.type)
        return any(effective[key] != expected[key] for key in _COMPARED)  # type: ignore[literal-required]

    def _microphone(self, identity: str) -> Microphone:
        participant = self._room.remote_participants.get(identity)
        if participant is None:
            return "absent"
        muted = False
        for publication in participant.track_publications.values():
            if publication.source == rtc.TrackSource.SOURCE_MICROPHONE:
                if not publication.muted:
                    return "unmuted"
                muted = True
        return "muted" if muted else "absent"

    def _room_state(
        self, session: ParticipantSession, microphone: Microphone, present: bool
    ) -> dict[str, Any]:
        """The room's view, next to the agent's config in events."""
        return {
            "room_id": self._room.name,
            "connection": self._link,
            "participant_present": present,
            "microphone": microphone,
        }

    async def _validate_loop(self) -> None:
        async for _ in aio.interval(self._interval):
            try:
                self.validate()
            except Exception as exc:
                self._host.count_error("session")
                self._log.error("session validation round failed", exc_info=exc)

    # -- change requests (handled by ChangeRequests) -------------------------------------------

    def _on_attributes_changed(
        self, changed: Mapping[str, str], participant: rtc.Participant
    ) -> None:
        # a method of ours, so that _handlers gives room.on and room.off the same handler
        self._requests.on_attributes_changed(changed, participant)

    def _type_changed(self, session: ParticipantSession, record: _Record, source: str) -> None:
        """A change request switched ``session``'s type: publish it and check the room."""
        if self._records.get(session.session_id) is record:
            self._emit("session_state_sync", session, record, trigger=f"type changed ({source})")
            self._validate(session, record, trigger="type changed")

    # -- room events ---------------------------------------------------------------------------

    def _on_track_published(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        self._track_event(participant, publication, "track_published")

    def _on_track_unpublished(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        self._track_event(participant, publication, "track_unpublished")

    def _on_track_muted(
        self, participant: rtc.Participant, publication: rtc.TrackPublication
    ) -> None:
        self._track_event(participant, publication, "track_muted")

    def _on_track_unmuted(
        self, participant: rtc.Participant, publication: rtc.TrackPublication
    ) -> None:
        self._track_event(participant, publication, "track_unmuted")

    def _track_event(
        self, participant: rtc.Participant, publication: rtc.TrackPublication, trigger: str
    ) -> None:
        if publication.source != rtc.TrackSource.SOURCE_MICROPHONE:
            return
        session = self._host.session_of(participant.identity)
        if session is None or (record := self._records.get(session.session_id)) is None:
            return
        microphone = self._microphone(session.participant_id)
        present = session.participant_id in self._room.remote_participants
        if record.config.is_voice:
            record.config.is_muted = microphone != "unmuted"
        room_state = self._room_state(session, microphone, present)
        self._emit("room_state_change", session, record, trigger=trigger, room_state=room_state)
        self._validate(session, record, trigger=trigger)

    def _on_room_reconnecting(self) -> None:
        self._room_link("reconnecting")

    def _on_room_reconnected(self) -> None:
        self._room_link("connected")
        self.validate(trigger="room reconnected")

    def _on_room_disconnected(self, reason: object = None) -> None:
        self._room_link("disconnected")

    def _on_room_updated(self) -> None:
        self.validate(trigger="room updated")

    def _room_link(self, link: RoomLink) -> None:
        self._link = link
        for session in list(self._host.sessions.values()):
            if (record := self._records.get(session.session_id)) is not None:
                microphone = self._microphone(session.participant_id)
                present = session.participant_id in self._room.remote_participants
                room_state = self._room_state(session, microphone, present)
                self._emit(
                    "room_state_change",
                    session,
                    record,
                    trigger=f"room {link}",
                    room_state=room_state,
                )
        if link == "connected":
            self._link_up.set()
            self._wakeup.set()
        else:
            self._link_up.clear()

    # -- publishing ----------------------------------------------------------------------------

    def _emit(
        self,
        event_type: SyncEventType,
        session: ParticipantSession,
        record: _Record,
        *,
        trigger: str,
        room_state: Mapping[str, Any] | None = None,
        issues: list[str] | None = None,
    ) -> None:
        now = datetime.now(UTC)
        record.config.last_sync_at = now
        message = sync_event(
            event_type,
            session_id=session.session_id,
            participant=session.participant_id,
            config=record.config,
            trigger=trigger,
            room_state=room_state,
            issues=issues,
            at=now,
        )
        self._events.append((session.participant_id, encode(message)))
        self.events_sent[event_type] += 1
        self._publish_config(session, record)

    def _publish_config(self, session: ParticipantSession, record: _Record) -> None:
        self._set_attribute(session.participant_id, encode(record.config.to_json()))

    def _set_attribute(self, identity: str, value: str) -> None:
        key = SESSION_ATTRIBUTE_PREFIX + identity
        size = len(key.encode()) + len(value.encode())
        others = sum(self._attribute_sizes.values()) - self._attribute_sizes.get(key, 0)
        if value and others + size > MAX_ATTRIBUTES_BYTES:
            self._log.warning("session attributes over budget, not published", extra={"key": key})
            self.rejected["attribute_budget"] += 1
            return
        if value:
            self._attribute_sizes[key] = size
        else:
            self._attribute_sizes.pop(key, None)
        if self._dirty.get(key) != value:
            self._dirty[key] = value
        self._kick()

    def _kick(self) -> None:
        self._drained.clear()
        self._wakeup.set()

    async def drain(self) -> None:
        """Wait until everything queued has been published (callers bound the wait)."""
        while not self._drained.is_set():
            await self._drained.wait()

    async def _publish_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._link_up.wait()
            while self._events:
                identity, payload = self._events.popleft()
                await self._guard(self._publish_event(identity, payload), "sync event")
            if self._dirty:
                wait = self._attribute_interval - (loop.time() - self._last_attribute_write)
                if wait > 0:
                    await asyncio.sleep(wait)  # attributes are for a few updates a second at most
                    self._wakeup.set()
                    continue
                attributes, self._dirty = self._dirty, {}
                self._last_attribute_write = loop.time()
                await self._guard(
                    self._room.local_participant.set_attributes(attributes), "attributes"
                )
            if not self._events and not self._dirty and not self._wakeup.is_set():
                self._drained.set()

    async def _publish_event(self, identity: str, payload: str) -> None:
        await self._room.local_participant.publish_data(
            payload, reliable=True, destination_identities=[identity], topic=SYNC_TOPIC
        )

    async def _guard(self, publish: Coroutine[Any, Any, None], what: str) -> None:
        try:
            await publish
        except Exception as exc:
            self._host.count_error("session")
            self._log.warning(f"failed to publish {what}", exc_info=exc)


__all__ = ["DEFAULT_SYNC_INTERVAL", "SessionConfig", "SessionSync", "SyncHost"]
