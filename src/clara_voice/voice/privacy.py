"""Each participant's conversation stays private in a shared room.

livekit's ``RoomIO`` assumes one conversation per room: its audio output publishes a
track every participant may subscribe to, its transcriptions go to the whole room, every
RoomIO writes the one ``lk.agent.state`` attribute, and its pre-connect audio handler is
registered once per room. clara_voice runs one RoomIO per participant, so it hands each
one a :class:`ParticipantView` of the room instead of the room itself: a view that behaves
as the room in everything but what the agent sends, which it directs at that participant
only, through the room's single owners (:class:`~clara_voice.voice.surface.RoomSurface`):

- tracks the agent publishes through the view can be subscribed to by that participant
  only (``grants``: the SFU enforces it, nobody else's subscription is ever accepted);
- text streams, byte streams and data packets are sent to that participant only; the
  deprecated transcription packet, which cannot be addressed, is not sent;
- ``lk.agent.state`` writes become that participant's own ``clara.agent_state.<identity>``
  attribute (``states``);
- byte and text stream handlers are registered for that participant's streams only
  (``streams``).

Closing a view unpublishes what it published (each within ``UNPUBLISH_TIMEOUT``; not at all
once the room is gone, which took the tracks with it), revokes the grants, removes its
stream handlers (closing their open streams) and the participant's agent-state attribute.
Every other attribute and method is the room's own.
"""

from __future__ import annotations

from typing import Any

from livekit import rtc
from livekit.agents.types import ATTRIBUTE_AGENT_STATE

from clara_voice._closing import within
from clara_voice.voice.streams import StreamHandler, StreamKind
from clara_voice.voice.surface import RoomSurface

UNPUBLISH_TIMEOUT = 3.0
"""Bound on unpublishing one of the agent's tracks when a conversation ends (a room that
is gone is not waited for at all)."""


class ParticipantView:
    """The room for one participant's RoomIO: the room's own, except what the agent sends."""

    def __init__(self, surface: RoomSurface, identity: str) -> None:
        self._surface = surface
        self._room = surface.room
        self.identity = identity
        self.local_participant = DirectedLocalParticipant(self, self._room.local_participant)
        self.published: list[rtc.LocalTrackPublication] = []
        """What the agent published through this view (updated in place on a republish)."""
        self._streams: set[tuple[StreamKind, str]] = set()
        self._closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._room, name)

    def register_byte_stream_handler(self, topic: str, handler: StreamHandler) -> None:
        self._surface.streams.add("byte", topic, self.identity, handler)
        self._streams.add(("byte", topic))

    def unregister_byte_stream_handler(self, topic: str) -> None:
        self._surface.streams.remove("byte", topic, self.identity)
        self._streams.discard(("byte", topic))

    def register_text_stream_handler(self, topic: str, handler: StreamHandler) -> None:
        self._surface.streams.add("text", topic, self.identity, handler)
        self._streams.add(("text", topic))

    def unregister_text_stream_handler(self, topic: str) -> None:
        self._surface.streams.remove("text", topic, self.identity)
        self._streams.discard(("text", topic))

    async def aclose(self) -> None:
        """Unpublish what was published through the view, drop its grants, handlers and
        agent state; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for kind, topic in list(self._streams):
            self._surface.streams.remove(kind, topic, self.identity)
        self._streams.clear()
        self._surface.states.set(self.identity, None)
        failures: list[Exception] = []
        for publication in self.published:
            try:
                await self._unpublish(publication.sid)
            except Exception as exc:
                failures.append(exc)
        self.published.clear()
        if failures:
            raise ExceptionGroup("could not unpublish the agent's tracks", failures)

    async def _unpublish(self, track_sid: str) -> None:
        # a room that is gone (deleted, or the agent's link lost for good) took the agent's
        # tracks with it, and the server never answers an unpublish there: nothing to wait for
        if self._room.isconnected():
            unpublish = self.local_participant.unpublish_track(track_sid)
            what = "unpublishing the agent's track"
            if await within(unpublish, UNPUBLISH_TIMEOUT, what=what, log=self._surface.log):
                return
            if self._room.isconnected():
                raise TimeoutError(f"the agent's track {track_sid} is still published")
        self._surface.grants.revoke(self.identity, track_sid)


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
        grants = self._view._surface.grants
        grants.restrict()  # before the track exists: nobody may subscribe until granted
        publication = await self._local.publish_track(track, options or rtc.TrackPublishOptions())
        self._view.published.append(publication)
        grants.grant(self._view.identity, publication.sid)
        return publication

    async def unpublish_track(self, track_sid: str) -> None:
        self._view._surface.grants.revoke(self._view.identity, track_sid)
        if track_sid in self._local.track_publications:
            await self._local.unpublish_track(track_sid)

    async def set_attributes(self, attributes: dict[str, str]) -> None:
        attributes = dict(attributes)
        if (state := attributes.pop(ATTRIBUTE_AGENT_STATE, None)) is not None:
            self._view._surface.states.set(self._view.identity, state)
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


__all__ = ["UNPUBLISH_TIMEOUT", "DirectedLocalParticipant", "ParticipantView"]
