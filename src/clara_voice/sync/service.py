"""Session synchronization (seed 003): the agent's view of each session, kept in step with
the room and published to it.

For every session of the room job, :class:`SessionSync` keeps a
:class:`~clara_voice.sync.protocol.SessionConfig` (type, state, turn detection…) and:

- follows the sessions' events (``session_created``, ``connection_state_changed``): the
  config's state derives from the session's connection state (connecting → ``idle``,
  connected → ``active``, reconnecting → ``syncing``, error → ``error``, closed →
  ``ending``), each change published as an event;
- applies change requests of a session's type from its owner, through the
  ``clara.session_type`` attribute or the ``clara.set_session_type`` RPC (admitted and
  parsed by :class:`~clara_voice.sync.requests.ChangeRequests`), by asking the sessions to
  switch it;
- validates every session against the room every ``CLARA_SYNC_INTERVAL`` seconds and on
  room events (:mod:`clara_voice.sync.validation`), correcting what drifted and flagging a
  voice session without a microphone;
- publishes each config as the agent attribute ``clara.session.<identity>`` and each change
  as an event on the ``clara.sync`` data topic to its owner only
  (:class:`~clara_voice.sync.publisher.SyncPublisher`); while the agent's own link is down,
  publishing waits.

It sees the sessions through :class:`~clara_voice.sync.seams.SyncSessions` and never holds
the agent. The wire format is in :mod:`clara_voice.sync.protocol` and docs/client-protocol.md.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

from livekit import rtc
from livekit.agents.utils import aio

from clara_voice._lifecycle import AsyncService
from clara_voice.config import Settings
from clara_voice.logging import ContextLogger
from clara_voice.states import ConnectionState, SessionType
from clara_voice.sync.protocol import (
    RPC_SET_SESSION_TYPE,
    STATE_OF,
    Microphone,
    RequestError,
    SessionConfig,
    SyncEventType,
)
from clara_voice.sync.publisher import SyncPublisher
from clara_voice.sync.requests import ChangeRequests
from clara_voice.sync.seams import SyncedSession, SyncSessions
from clara_voice.sync.validation import RoomLink, SessionRecord, check, microphone_of, room_state
from clara_voice.telemetry import ErrorSource
from clara_voice.voice.surface import RoomSurface

FLUSH_TIMEOUT = 2.0
"""Seconds ``aclose`` waits for queued events to be published."""
_TRACK_EVENTS: tuple[rtc.room.EventTypes, ...] = (
    "track_published",
    "track_unpublished",
    "track_muted",
    "track_unmuted",
)


class SessionSync(AsyncService):
    """Keeps, validates and publishes a SessionConfig per session of one room job."""

    def __init__(
        self,
        room: rtc.Room,
        sessions: SyncSessions,
        settings: Settings,
        *,
        surface: RoomSurface,
        log: ContextLogger,
        count_error: Callable[[ErrorSource], None] = lambda source: None,
        interval: float | None = None,
        rate_capacity: float = 5.0,
        rate_per_second: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._room = room
        self._sessions = sessions
        self._log = log
        self._count_error = count_error
        self._interval = interval if interval is not None else settings.sync_interval
        self._records: dict[str, SessionRecord] = {}
        self._link: RoomLink = "connected"
        self._validate_atask: asyncio.Task[None] | None = None
        self._handlers: dict[rtc.room.EventTypes, Callable[..., None]] = {}
        self._started = False
        self._closed = False
        self.rejected: Counter[str] = Counter()
        """Change requests refused or ignored, by reason (client mistakes, not agent errors)."""
        self.corrections = 0
        self._publisher = SyncPublisher(
            room, surface.attributes, log=log, count_error=count_error, rejected=self.rejected
        )
        self._requests = ChangeRequests(
            sessions,
            self,
            refusals=surface.notices.refusals,
            rejected=self.rejected,
            rate_capacity=rate_capacity,
            rate_per_second=rate_per_second,
            clock=clock,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Follow the sessions and the room, answer the RPC, start validating and
        publishing; idempotent."""
        if self._started or self._closed:
            return
        self._started = True
        for event, handler in self._session_handlers().items():
            self._sessions.on(event, handler)
        for room_event, room_handler in self._room_handlers().items():
            self._room.on(room_event, room_handler)
        self._room.local_participant.register_rpc_method(
            RPC_SET_SESSION_TYPE, self._requests.on_rpc
        )
        self._publisher.start()
        self._validate_atask = asyncio.create_task(
            self._validate_loop(), name="clara.sync.validate"
        )
        for session in list(self._sessions.sessions.values()):
            self._record(session)

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
            for event, handler in self._session_handlers().items():
                self._sessions.off(event, handler)
            for room_event, room_handler in self._room_handlers().items():
                self._room.off(room_event, room_handler)
            self._room.local_participant.unregister_rpc_method(RPC_SET_SESSION_TYPE)
            if self._link == "connected" and self._room.isconnected():
                try:
                    await asyncio.wait_for(self._publisher.drain(), FLUSH_TIMEOUT)
                except TimeoutError:
                    self._log.warning(
                        "sync events not all published before closing",
                        extra={"queued": self._publisher.queued},
                    )
        if self._validate_atask is not None:
            await aio.cancel_and_wait(self._validate_atask)
        await self._publisher.aclose()
        self._records.clear()
        self._requests.clear()

    async def drain(self) -> None:
        """Wait until everything queued has been published (callers bound the wait)."""
        await self._publisher.drain()

    @property
    def events_sent(self) -> Counter[str]:
        """Events sent so far, by type."""
        return self._publisher.events_sent

    def _session_handlers(self) -> dict[Any, Callable[..., None]]:
        return {
            "session_created": self._on_session_created,
            "connection_state_changed": self._on_state_changed,
        }

    def _room_handlers(self) -> dict[rtc.room.EventTypes, Callable[..., None]]:
        # made once, so that room.off gets the very callables room.on got
        if not self._handlers:
            self._handlers = {
                "participant_attributes_changed": self._requests.on_attributes_changed,
                **{event: partial(self._on_track, event) for event in _TRACK_EVENTS},
                "reconnecting": lambda: self._room_link("reconnecting"),
                "reconnected": lambda: self._room_link("connected", check="room reconnected"),
                "disconnected": lambda *_: self._room_link("disconnected"),
                "room_updated": lambda *_: self.validate(trigger="room updated"),
                "moved": lambda *_: self.validate(trigger="room updated"),
            }
        return self._handlers

    # -- the sessions' events --------------------------------------------------------------

    def _on_session_created(self, session: SyncedSession) -> None:
        self._record(session)

    def _on_state_changed(
        self, session: SyncedSession, old: ConnectionState, new: ConnectionState, reason: str
    ) -> None:
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
        if state == "syncing":
            self._emit("connection_interruption", session, record, trigger=reason)
        else:
            self._emit("session_state_sync", session, record, trigger=reason)
        if state == "active":
            if previous == "syncing":
                self._validate(session, record, trigger="reconnected")
            pending, record.pending_type = record.pending_type, None
            if pending is not None and pending != session.session_type:
                self._apply_quietly(session, pending, "attribute")

    def _record(
        self, session: SyncedSession, *, state: ConnectionState | None = None
    ) -> SessionRecord:
        record = self._records.get(session.session_id)
        if record is None:
            config = SessionConfig(
                type=session.session_type,
                room_id=self._room.name,
                state=STATE_OF[state or session.connection_state],
            )
            record = self._records[session.session_id] = SessionRecord(config)
            if not self._closed:
                self._emit("session_state_sync", session, record, trigger="session created")
        return record

    def _forget(self, session: SyncedSession) -> None:
        self._records.pop(session.session_id, None)
        if self._sessions.of(session.participant_id) is None:
            self._publisher.attribute(session.participant_id, "")

    # -- change requests (admitted and parsed by ChangeRequests) -------------------------------

    def defer(self, session: SyncedSession, requested: SessionType) -> None:
        """A type asked for while ``session`` was (re)connecting: applied once it is active."""
        self._record(session).pending_type = requested

    def _apply_quietly(self, session: SyncedSession, requested: SessionType, source: str) -> None:
        """Switch ``session`` to ``requested``; a refusal is counted and logged only."""
        try:
            self.switch(session, requested, source)
        except RequestError as error:
            self._requests.refuse(error, session.participant_id, source)

    def switch(self, session: SyncedSession, requested: SessionType, source: str) -> SessionConfig:
        """Switch ``session`` to ``requested`` and publish it; :class:`RequestError` when it
        cannot (synchronous: the pipeline's switch is)."""
        record = self._record(session)
        if session.connection_state != "connected" or session.pipeline is None:
            raise RequestError("session_not_active", "the session is not active")
        if session.session_type == requested and record.config.type == requested:
            return record.config
        try:
            self._sessions.switch_type(session, requested, source=source)
        except Exception as exc:
            self._count_error("session")
            session.log.error(
                "failed to change the session type",
                extra={"to": requested, "from": session.session_type},
                exc_info=exc,
            )
            raise RequestError(
                "reconfigure_failed",
                f"the session could not switch to {requested}; it keeps its type",
            ) from None
        record.config.retype(requested)
        self._emit("session_state_sync", session, record, trigger=f"type changed ({source})")
        self._validate(session, record, trigger="type changed")
        return record.config

    # -- validation ------------------------------------------------------------------------

    def validate(self, *, trigger: str = "validation") -> None:
        """Check every session against the room now (the periodic round does this)."""
        for session in list(self._sessions.sessions.values()):
            if session.connection_state == "closed":
                continue
            self._validate(session, self._record(session), trigger=trigger)

    def _validate(self, session: SyncedSession, record: SessionRecord, *, trigger: str) -> None:
        found = check(session, record, room=self._room, link=self._link)
        if found.unreadable_pipeline is not None:
            self._count_error("session")
            session.log.warning(
                "failed to read the pipeline's state", exc_info=found.unreadable_pipeline
            )
        if found.corrected:
            self.corrections += 1
        config = record.config
        if found.issues:
            config.inconsistency_detected = True
            session.log.warning(
                "session inconsistent with the room",
                extra={"issues": found.issues, "corrected": found.corrected, "trigger": trigger},
            )
            self._emit(
                "session_inconsistency",
                session,
                record,
                trigger=trigger,
                room_state=room_state(self._room, self._link, found.microphone, found.present),
                issues=found.issues,
            )
        elif config.inconsistency_detected and not found.flagged:
            config.inconsistency_detected = False
            self._emit("session_state_sync", session, record, trigger=f"{trigger}: consistent")
        else:
            self._publish_config(session, record)

    async def _validate_loop(self) -> None:
        async for _ in aio.interval(self._interval):
            try:
                self.validate()
            except Exception as exc:
                self._count_error("session")
                self._log.error("session validation round failed", exc_info=exc)

    # -- room events ---------------------------------------------------------------------------

    def _on_track(self, trigger: rtc.room.EventTypes, *args: Any) -> None:
        # track_(un)published give (publication, participant), track_(un)muted the reverse
        participant, publication = args if isinstance(args[0], rtc.Participant) else args[::-1]
        if publication.source != rtc.TrackSource.SOURCE_MICROPHONE:
            return
        session = self._sessions.of(participant.identity)
        if session is None or (record := self._records.get(session.session_id)) is None:
            return
        microphone = microphone_of(self._room, session.participant_id)
        if record.config.is_voice:
            record.config.is_muted = microphone != "unmuted"
        self._emit_room_state(session, record, trigger, microphone)
        self._validate(session, record, trigger=trigger)

    def _room_link(self, link: RoomLink, *, check: str | None = None) -> None:
        self._link = link
        for session in list(self._sessions.sessions.values()):
            if (record := self._records.get(session.session_id)) is not None:
                microphone = microphone_of(self._room, session.participant_id)
                self._emit_room_state(session, record, f"room {link}", microphone)
        self._publisher.link(up=link == "connected")
        if check is not None:
            self.validate(trigger=check)

    def _emit_room_state(
        self, session: SyncedSession, record: SessionRecord, trigger: str, microphone: Microphone
    ) -> None:
        present = session.participant_id in self._room.remote_participants
        state = room_state(self._room, self._link, microphone, present)
        self._emit("room_state_change", session, record, trigger=trigger, room_state=state)

    # -- publishing ----------------------------------------------------------------------------

    def _emit(
        self,
        event_type: SyncEventType,
        session: SyncedSession,
        record: SessionRecord,
        *,
        trigger: str,
        room_state: Mapping[str, Any] | None = None,
        issues: list[str] | None = None,
    ) -> None:
        record.config.last_sync_at = datetime.now(UTC)
        self._publisher.send(
            event_type,
            session_id=session.session_id,
            identity=session.participant_id,
            config=record.config,
            trigger=trigger,
            room_state=room_state,
            issues=issues,
        )

    def _publish_config(self, session: SyncedSession, record: SessionRecord) -> None:
        self._publisher.config(session.participant_id, record.config)


__all__ = ["FLUSH_TIMEOUT", "SessionSync"]
