"""Each participant's conversation stays private in a shared room.

livekit's ``RoomIO`` assumes one conversation per room: its audio output publishes a
track every participant may subscribe to, its transcriptions go to the whole room, every
RoomIO writes the one ``lk.agent.state`` attribute, and its pre-connect audio handler is
registered once per room. clara_voice runs one RoomIO per participant, so it hands each
one a :class:`ParticipantView` of the room instead of the room itself: a view that behaves
as the room in everything but what the agent sends, which it directs at that participant
only:

- tracks the agent publishes through the view can be subscribed to by that participant
  only: :class:`RoomPrivacy` keeps the agent's track subscription permissions (the SFU
  enforces them: nobody else's subscription is ever accepted), granting each track to its
  owner as it is published and revoking it when it is unpublished or re-issued;
- text streams, byte streams and data packets are sent to that participant only; the
  deprecated transcription packet, which cannot be addressed, is not sent;
- ``lk.agent.state`` writes become that participant's own ``clara.agent_state.<identity>``
  attribute, and ``lk.agent.state`` shows the state of the room's one conversation (or,
  with several, the busiest: speaking, thinking, listening, initializing, idle);
- byte and text stream handlers are registered per participant: the room has one handler
  per topic, which hands each stream to its sender's handler.

Closing a view unpublishes what it published, revokes the grants and removes the
participant's agent-state attribute. Every other attribute and method is the room's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from livekit import rtc
from livekit.agents.types import ATTRIBUTE_AGENT_STATE
from livekit.agents.utils import aio

from clara_voice.logging import ContextLogger

AGENT_STATE_PREFIX = "clara.agent_state."
_STATE_ORDER = ("speaking", "thinking", "listening", "initializing", "idle")

StreamHandler = Callable[[Any, str], None]


def agent_state_attribute(identity: str) -> str:
    """The agent attribute holding the state of ``identity``'s conversation."""
    return AGENT_STATE_PREFIX + identity


def busiest_state(states: list[str]) -> str | None:
    """The state ``lk.agent.state`` shows for the room's conversations."""
    if not states:
        return None
    return min(states, key=lambda s: _STATE_ORDER.index(s) if s in _STATE_ORDER else 99)


class RoomPrivacy:
    """The room-wide half: subscription grants, agent states and stream dispatch."""

    def __init__(self, room: rtc.Room, log: ContextLogger) -> None:
        self._room = room
        self._log = log
        self._grants: dict[str, set[str]] = {}
        self._restricted = False
        self._states: dict[str, str] = {}
        self._written: dict[str, str] = {}
        self._state_dirty = asyncio.Event()
        self._state_atask: asyncio.Task[None] | None = None
        self._byte_handlers: dict[str, dict[str, StreamHandler]] = {}
        self._text_handlers: dict[str, dict[str, StreamHandler]] = {}
        self._room.on("local_track_republished", self._on_republished)
        self._closed = False

    def view(self, identity: str) -> ParticipantView:
        """The room as ``identity``'s conversation sees it."""
        return ParticipantView(self, self._room, identity)

    async def aclose(self) -> None:
        """Stop following the room; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._room.off("local_track_republished", self._on_republished)
        for topic in list(self._byte_handlers):
            self._room.unregister_byte_stream_handler(topic)
        for topic in list(self._text_handlers):
            self._room.unregister_text_stream_handler(topic)
        self._byte_handlers.clear()
        self._text_handlers.clear()
        if self._state_atask is not None:
            await aio.cancel_and_wait(self._state_atask)

    # -- subscription permissions ---------------------------------------------------------

    def restrict(self) -> None:
        """From now on only granted participants may subscribe to the agent's tracks."""
        if not self._restricted:
            self._restricted = True
            self._apply_grants()

    def grant(self, identity: str, track_sid: str) -> None:
        self._grants.setdefault(identity, set()).add(track_sid)
        self._apply_grants()

    def revoke(self, identity: str, track_sid: str) -> None:
        sids = self._grants.get(identity)
        if sids is None or track_sid not in sids:
            return
        sids.discard(track_sid)
        if not sids:
            del self._grants[identity]
        self._apply_grants()

    def granted(self) -> dict[str, frozenset[str]]:
        """Who may subscribe to which of the agent's tracks."""
        return {identity: frozenset(sids) for identity, sids in self._grants.items()}

    def _apply_grants(self) -> None:
        if not self._room.isconnected():
            return  # re-applied on republish; permissions need a connected participant
        self._room.local_participant.set_track_subscription_permissions(
            allow_all_participants=False,
            participant_permissions=[
                rtc.ParticipantTrackPermission(
                    participant_identity=identity, allowed_track_sids=sorted(sids)
                )
                for identity, sids in sorted(self._grants.items())
            ],
        )

    def _on_republished(self, publication: rtc.LocalTrackPublication, previous_sid: str) -> None:
        # a full reconnect re-issues the agent's track sids: move the grants along
        for sids in self._grants.values():
            if previous_sid in sids:
                sids.discard(previous_sid)
                sids.add(publication.sid)
        if self._restricted:
            self._apply_grants()

    # -- agent state ----------------------------------------------------------------------

    def set_agent_state(self, identity: str, state: str | None) -> None:
        """``identity``'s conversation is now in ``state`` (None: it ended)."""
        if state is None:
            self._states.pop(identity, None)
        else:
            self._states[identity] = state
        self._state_dirty.set()
        if self._state_atask is None and not self._closed:
            self._state_atask = asyncio.create_task(
                self._write_states(), name="clara.privacy.agent_state"
            )

    def _wanted_attributes(self) -> dict[str, str]:
        wanted = {agent_state_attribute(i): s for i, s in self._states.items()}
        for key in self._written:
            wanted.setdefault(key, "")  # ended conversations: remove their attribute
        busiest = busiest_state(list(self._states.values()))
        if busiest is not None:
            wanted[ATTRIBUTE_AGENT_STATE] = busiest
        return wanted

    async def _write_states(self) -> None:
        while True:
            await self._state_dirty.wait()
            self._state_dirty.clear()
            changes = {
                k: v for k, v in self._wanted_attributes().items() if self._written.get(k) != v
            }
            if not changes or not self._room.isconnected():
                continue
            try:
                await self._room.local_participant.set_attributes(changes)
            except Exception as exc:
                self._log.warning("could not publish the agent state", exc_info=exc)
                continue
            for key, value in changes.items():
                if value:
                    self._written[key] = value
                else:
                    self._written.pop(key, None)

    # -- stream handlers ------------------------------------------------------------------

    def add_stream_handler(
        self, kind: str, topic: str, identity: str, handler: StreamHandler
    ) -> None:
        handlers = self._byte_handlers if kind == "byte" else self._text_handlers
        if topic not in handlers:
            handlers[topic] = {}
            dispatch = self._dispatcher(handlers[topic], topic)
            if kind == "byte":
                self._room.register_byte_stream_handler(topic, dispatch)
            else:
                self._room.register_text_stream_handler(topic, dispatch)
        if identity in handlers[topic]:
            raise ValueError(f"{topic!r} already has a handler for {identity!r}")
        handlers[topic][identity] = handler

    def remove_stream_handler(self, kind: str, topic: str, identity: str) -> None:
        handlers = self._byte_handlers if kind == "byte" else self._text_handlers
        by_identity = handlers.get(topic)
        if by_identity is None:
            return
        by_identity.pop(identity, None)
        if not by_identity:
            del handlers[topic]
            if kind == "byte":
                self._room.unregister_byte_stream_handler(topic)
            else:
                self._room.unregister_text_stream_handler(topic)

    def _dispatcher(self, by_identity: dict[str, StreamHandler], topic: str) -> StreamHandler:
        def dispatch(reader: Any, sender: str) -> None:
            handler = by_identity.get(sender)
            if handler is None:
                self._log.debug(
                    "stream from a participant without a session ignored",
                    extra={"topic": topic, "participant": sender},
                )
                return
            handler(reader, sender)

        return dispatch


class ParticipantView:
    """The room for one participant's RoomIO: the room's own, except what the agent sends."""

    def __init__(self, privacy: RoomPrivacy, room: rtc.Room, identity: str) -> None:
        self._privacy = privacy
        self._room = room
        self.identity = identity
        self.local_participant = DirectedLocalParticipant(self, room.local_participant)
        self.published: list[rtc.LocalTrackPublication] = []
        """What the agent published through this view (updated in place on a republish)."""
        self._streams: set[tuple[str, str]] = set()
        self._closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._room, name)

    def register_byte_stream_handler(self, topic: str, handler: StreamHandler) -> None:
        self._privacy.add_stream_handler("byte", topic, self.identity, handler)
        self._streams.add(("byte", topic))

    def unregister_byte_stream_handler(self, topic: str) -> None:
        self._privacy.remove_stream_handler("byte", topic, self.identity)
        self._streams.discard(("byte", topic))

    def register_text_stream_handler(self, topic: str, handler: StreamHandler) -> None:
        self._privacy.add_stream_handler("text", topic, self.identity, handler)
        self._streams.add(("text", topic))

    def unregister_text_stream_handler(self, topic: str) -> None:
        self._privacy.remove_stream_handler("text", topic, self.identity)
        self._streams.discard(("text", topic))

    async def aclose(self) -> None:
        """Unpublish what was published through the view, drop its grants, handlers and
        agent state; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for kind, topic in list(self._streams):
            self._privacy.remove_stream_handler(kind, topic, self.identity)
        self._streams.clear()
        self._privacy.set_agent_state(self.identity, None)
        failures: list[Exception] = []
        for publication in self.published:
            try:
                await self.local_participant.unpublish_track(publication.sid)
            except Exception as exc:
                failures.append(exc)
        self.published.clear()
        if failures:
            raise ExceptionGroup("could not unpublish the agent's tracks", failures)


class DirectedLocalParticipant:
    """The agent's local participant as a view sees it: what it sends goes to one identity."""

    def __init__(self, view: ParticipantView, local: rtc.LocalParticipant) -> None:
        self._view = view
        self._local = local

    def __getattr__(self, name: str) -> Any:
        return getattr(self._local, name)

    @property
    def _to(self) -> list[str]:
        return [self._view.identity]

    async def publish_track(
        self, track: rtc.LocalTrack, options: rtc.TrackPublishOptions | None = None
    ) -> rtc.LocalTrackPublication:
        privacy = self._view._privacy
        privacy.restrict()  # before the track exists: nobody may subscribe until granted
        publication = await self._local.publish_track(track, options or rtc.TrackPublishOptions())
        self._view.published.append(publication)
        privacy.grant(self._view.identity, publication.sid)
        return publication

    async def unpublish_track(self, track_sid: str) -> None:
        self._view._privacy.revoke(self._view.identity, track_sid)
        if track_sid in self._local.track_publications:
            await self._local.unpublish_track(track_sid)

    async def set_attributes(self, attributes: dict[str, str]) -> None:
        attributes = dict(attributes)
        if (state := attributes.pop(ATTRIBUTE_AGENT_STATE, None)) is not None:
            self._view._privacy.set_agent_state(self._view.identity, state)
        if attributes:
            await self._local.set_attributes(attributes)

    async def publish_transcription(self, transcription: rtc.Transcription) -> None:
        """Not sent: the deprecated transcription packet cannot be addressed to one
        participant (clients read ``lk.transcription`` text streams instead)."""

    async def publish_data(self, payload: bytes | str, **kwargs: Any) -> None:
        kwargs["destination_identities"] = self._to
        await self._local.publish_data(payload, **kwargs)

    async def stream_text(self, **kwargs: Any) -> rtc.TextStreamWriter:
        kwargs["destination_identities"] = self._to
        return await self._local.stream_text(**kwargs)

    async def send_text(self, text: str, **kwargs: Any) -> rtc.TextStreamInfo:
        kwargs["destination_identities"] = self._to
        return await self._local.send_text(text, **kwargs)

    async def stream_bytes(self, name: str, **kwargs: Any) -> rtc.ByteStreamWriter:
        kwargs["destination_identities"] = self._to
        return await self._local.stream_bytes(name, **kwargs)

    async def send_bytes(self, data: bytes, **kwargs: Any) -> rtc.ByteStreamInfo:
        kwargs["destination_identities"] = self._to
        return await self._local.send_bytes(data, **kwargs)

    async def send_file(self, file_path: str, **kwargs: Any) -> rtc.ByteStreamInfo:
        kwargs["destination_identities"] = self._to
        return await self._local.send_file(file_path, **kwargs)


__all__ = [
    "AGENT_STATE_PREFIX",
    "DirectedLocalParticipant",
    "ParticipantView",
    "RoomPrivacy",
    "agent_state_attribute",
    "busiest_state",
]
