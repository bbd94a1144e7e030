"""The test kit: a fake room, real participants, a fake pipeline factory.

``FakeRoom`` subclasses livekit's ``rtc.EventEmitter`` and emits what ``rtc.Room`` emits,
with the same arguments and in the same order (``remote_participants`` is updated before
``participant_connected`` and after ``participant_disconnected``'s pop, as the SDK does).
Participants are livekit's real ``rtc.RemoteParticipant`` built from protocol info with no
native handle, so every property the agent reads is the SDK's own.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import itertools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from livekit import rtc
from livekit.rtc._proto import handle_pb2, participant_pb2, track_pb2

from clara_voice.agent.session import ParticipantSession
from clara_voice.states import SessionType
from clara_voice.voice.messages import HistoryMessage
from clara_voice.voice.turns import EffectiveConfig, expected_effective

_sids = itertools.count(1)


def make_participant(
    identity: str,
    *,
    kind: int = rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
    attributes: Mapping[str, str] | None = None,
    metadata: str = "",
    sid: str | None = None,
    joined_at_ms: int = 0,
) -> rtc.RemoteParticipant:
    """A real ``rtc.RemoteParticipant`` (no FFI handle behind it)."""
    info = participant_pb2.ParticipantInfo(
        sid=sid or f"PA_{next(_sids)}",
        identity=identity,
        name=identity,
        metadata=metadata,
        kind=kind,  # type: ignore[arg-type]
        attributes=dict(attributes or {}),
        joined_at=joined_at_ms,  # the SDK's field is in ms
    )
    owned = participant_pb2.OwnedParticipant(handle=handle_pb2.FfiOwnedHandle(id=0), info=info)
    return rtc.RemoteParticipant(owned)


def make_publication(
    *,
    source: int = rtc.TrackSource.SOURCE_MICROPHONE,
    muted: bool = False,
    sid: str | None = None,
) -> rtc.RemoteTrackPublication:
    """A real ``rtc.RemoteTrackPublication`` (no FFI handle behind it)."""
    kind = (
        rtc.TrackKind.KIND_AUDIO
        if source in (rtc.TrackSource.SOURCE_MICROPHONE, rtc.TrackSource.SOURCE_SCREENSHARE_AUDIO)
        else rtc.TrackKind.KIND_VIDEO
    )
    info = track_pb2.TrackPublicationInfo(
        sid=sid or f"TR_{next(_sids)}",
        name="microphone" if source == rtc.TrackSource.SOURCE_MICROPHONE else "track",
        kind=kind,  # type: ignore[arg-type]
        source=source,  # type: ignore[arg-type]
        muted=muted,
        remote=True,
    )
    owned = track_pb2.OwnedTrackPublication(handle=handle_pb2.FfiOwnedHandle(id=0), info=info)
    return rtc.RemoteTrackPublication(owned)


class FakeLocalParticipant:
    """The agent's own participant in the fake room (RPC registry as in the SDK)."""

    def __init__(self, identity: str = "agent-clara") -> None:
        self.identity = identity
        self.sid = "PA_agent"
        self.joined_at: datetime.datetime | None = datetime.datetime.now(datetime.UTC)
        self.attributes: dict[str, str] = {}
        self.rpc_handlers: dict[str, Callable[[rtc.RpcInvocationData], Awaitable[str]]] = {}
        self.attribute_writes: list[dict[str, str]] = []
        self.published: list[tuple[str, str, list[str]]] = []
        """``(topic, payload, destination_identities)`` of every publish_data call."""
        self.publish_error: Exception | None = None

    async def set_attributes(self, attributes: dict[str, str]) -> None:
        """As the SDK: the given keys are set, an empty value deletes its key."""
        if self.publish_error is not None:
            raise self.publish_error
        self.attribute_writes.append(dict(attributes))
        for key, value in attributes.items():
            if value:
                self.attributes[key] = value
            else:
                self.attributes.pop(key, None)

    async def publish_data(
        self,
        payload: bytes | str,
        *,
        reliable: bool = True,
        destination_identities: list[str] | None = None,
        topic: str = "",
    ) -> None:
        if self.publish_error is not None:
            raise self.publish_error
        text = payload.decode() if isinstance(payload, bytes) else payload
        self.published.append((topic, text, list(destination_identities or [])))

    def register_rpc_method(self, method: str, handler: Any) -> Any:
        self.rpc_handlers[method] = handler
        return handler

    def unregister_rpc_method(self, method: str) -> None:
        self.rpc_handlers.pop(method, None)

    async def call_rpc(self, caller: str, method: str, payload: str = "") -> str:
        """What the SDK does when ``caller`` performs an RPC on the agent."""
        handler = self.rpc_handlers.get(method)
        if handler is None:
            raise rtc.RpcError(rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD, "Method not supported")
        data = rtc.RpcInvocationData(
            request_id=f"req-{next(_sids)}",
            caller_identity=caller,
            payload=payload,
            response_timeout=10.0,
            method=method,
        )
        result = handler(data)
        return str(await result if inspect.isawaitable(result) else result)


class FakeTextStreamReader:
    """A chat message as the SDK's TextStreamReader hands it to a handler: its chunks, one
    at a time (``chunks_read`` counts those taken), and its declared size in bytes when the
    sender gave one (``declare_size``)."""

    CHUNK = 1000

    def __init__(self, text: str, topic: str, *, declare_size: bool = True) -> None:
        self._text = text
        self.chunks_read = 0
        self.closed = False
        """Closed, by its handler or because it was read to the end (as livekit's are)."""
        self.info = rtc.TextStreamInfo(
            stream_id=f"TS_{next(_sids)}",
            mime_type="text/plain",
            topic=topic,
            timestamp=0,
            size=len(text.encode()) if declare_size else None,
            attributes={},
            attachments=[],
        )

    async def read_all(self) -> str:
        return "".join([chunk async for chunk in self])

    def __aiter__(self) -> FakeTextStreamReader:
        return self

    async def __anext__(self) -> str:
        start = self.chunks_read * self.CHUNK
        if self.closed or start >= len(self._text):
            self.closed = True
            raise StopAsyncIteration
        self.chunks_read += 1
        return self._text[start : start + self.CHUNK]

    def close(self) -> None:
        self.closed = True


class FakeByteStreamReader:
    """A byte stream as the SDK's ByteStreamReader hands it to a handler: ``chunks`` one at
    a time, and ``closed`` once its handler closed it or read it to the end."""

    def __init__(
        self, chunks: list[bytes], topic: str, *, attributes: dict[str, str] | None = None
    ) -> None:
        self._chunks = list(chunks)
        self.chunks_read = 0
        self.closed = False
        self.info = rtc.ByteStreamInfo(
            stream_id=f"BS_{next(_sids)}",
            mime_type="application/octet-stream",
            topic=topic,
            timestamp=0,
            size=sum(len(c) for c in chunks),
            attributes=dict(attributes or {}),
            name="bytes",
        )

    def __aiter__(self) -> FakeByteStreamReader:
        return self

    async def __anext__(self) -> bytes:
        if self.closed or self.chunks_read >= len(self._chunks):
            self.closed = True
            raise StopAsyncIteration
        self.chunks_read += 1
        return self._chunks[self.chunks_read - 1]

    def close(self) -> None:
        self.closed = True


class FakeRoom(rtc.EventEmitter[rtc.room.EventTypes]):
    """Stands in for ``rtc.Room`` at the network edge."""

    def __init__(self, name: str = "test-room", *, metadata: str = "") -> None:
        super().__init__()
        self.name = name
        self.metadata = metadata
        self.remote_participants: dict[str, rtc.RemoteParticipant] = {}
        self.local_participant = FakeLocalParticipant()
        self.connect_error: Exception | None = None
        self.text_stream_handlers: dict[str, Callable[..., None]] = {}
        self.byte_stream_handlers: dict[str, Callable[..., None]] = {}
        self.connected = False
        self.connect_calls: list[tuple[str, str]] = []

    # -- what the SDK does on its own events --------------------------------------------

    def join(self, identity: str, **kwargs: Any) -> rtc.RemoteParticipant:
        participant = make_participant(identity, **kwargs)
        if identity in self.remote_participants:
            raise AssertionError("participant already exists")  # as rtc.Room raises
        self.remote_participants[identity] = participant
        self.emit("participant_connected", participant)
        return participant

    def leave(
        self,
        identity: str,
        reason: int = rtc.DisconnectReason.CLIENT_INITIATED,
    ) -> rtc.RemoteParticipant:
        participant = self.remote_participants.pop(identity)
        participant._info.disconnect_reason = reason  # type: ignore[assignment]
        self.emit("participant_disconnected", participant)
        return participant

    def drop(
        self, identity: str, reason: int = rtc.DisconnectReason.SIGNAL_CLOSE
    ) -> rtc.RemoteParticipant:
        """The participant's connection is lost (not its own choice)."""
        return self.leave(identity, reason)

    def quality(self, identity: str, quality: rtc.ConnectionQuality) -> None:
        """The SFU reports a participant's connection quality."""
        participant = self.remote_participants[identity]
        participant._connection_quality = quality
        self.emit("connection_quality_changed", participant, quality)

    def set_attributes(self, identity: str, attributes: Mapping[str, str]) -> None:
        """``identity`` changes its attributes (an empty value deletes its key)."""
        participant = self.remote_participants[identity]
        changed = dict(attributes)
        current = dict(participant._info.attributes)
        for key, value in changed.items():
            if value:
                current[key] = value
            else:
                current.pop(key, None)
        participant._info.attributes.clear()
        participant._info.attributes.update(current)
        self.emit("participant_attributes_changed", changed, participant)

    def publish_track(
        self, identity: str, *, source: int = rtc.TrackSource.SOURCE_MICROPHONE, muted: bool = False
    ) -> rtc.RemoteTrackPublication:
        """``identity`` publishes a track (a microphone unless told)."""
        participant = self.remote_participants[identity]
        publication = make_publication(source=source, muted=muted)
        participant._track_publications[publication.sid] = publication
        self.emit("track_published", publication, participant)
        return publication

    def unpublish_track(self, identity: str, sid: str) -> None:
        participant = self.remote_participants[identity]
        publication = participant._track_publications.pop(sid)
        self.emit("track_unpublished", publication, participant)

    def mute_track(self, identity: str, sid: str, muted: bool = True) -> None:
        """``identity`` mutes (or unmutes) one of its tracks."""
        participant = self.remote_participants[identity]
        publication = participant._track_publications[sid]
        publication._info.muted = muted
        self.emit("track_muted" if muted else "track_unmuted", participant, publication)

    # -- the subset of rtc.Room's API the job uses ---------------------------------------

    def isconnected(self) -> bool:
        return self.connected

    async def connect(self, url: str, token: str, options: Any = None) -> None:
        self.connect_calls.append((url, token))
        if self.connect_error is not None:
            raise self.connect_error
        self.connected = True
        self.emit("connected")

    async def disconnect(self) -> None:
        if self.connected:
            self.connected = False
            self.emit("disconnected", rtc.DisconnectReason.CLIENT_INITIATED)

    def register_text_stream_handler(self, topic: str, handler: Callable[..., None]) -> None:
        if topic in self.text_stream_handlers:
            raise ValueError(f"text stream handler for topic '{topic}' already set")
        self.text_stream_handlers[topic] = handler

    def unregister_text_stream_handler(self, topic: str) -> None:
        self.text_stream_handlers.pop(topic, None)

    def register_byte_stream_handler(self, topic: str, handler: Callable[..., None]) -> None:
        if topic in self.byte_stream_handlers:
            raise ValueError(f"byte stream handler for topic '{topic}' already set")
        self.byte_stream_handlers[topic] = handler

    def unregister_byte_stream_handler(self, topic: str) -> None:
        self.byte_stream_handlers.pop(topic, None)

    def send_text(
        self, identity: str, text: str, topic: str = "lk.chat", *, declare_size: bool = True
    ) -> FakeTextStreamReader:
        """``identity`` sends a text stream on ``topic`` (dropped if nobody handles it)."""
        reader = FakeTextStreamReader(text, topic, declare_size=declare_size)
        if (handler := self.text_stream_handlers.get(topic)) is not None:
            handler(reader, identity)
        return reader

    def send_bytes(
        self, identity: str, chunks: list[bytes], topic: str, **kwargs: Any
    ) -> FakeByteStreamReader:
        """``identity`` sends a byte stream on ``topic`` (dropped if nobody handles it)."""
        reader = FakeByteStreamReader(chunks, topic, **kwargs)
        if (handler := self.byte_stream_handlers.get(topic)) is not None:
            handler(reader, identity)
        return reader

    def listener_count(self) -> int:
        return sum(len(callbacks) for callbacks in self._events.values())


class FakePipeline:
    def __init__(
        self,
        identity: str,
        *,
        session_type: SessionType = "voice-vad",
        close_delay: float = 0.0,
    ) -> None:
        self.identity = identity
        self.close_delay = close_delay
        """Seconds its close takes (a real AgentSession's close takes about half a second)."""
        self.close_calls = 0
        self.close_error: Exception | None = None
        self.session_type = session_type
        self.session_type_calls: list[SessionType] = []
        self.events: Any = None
        """The PipelineEvents the agent gave it (to report messages and turns)."""
        self.history: list[HistoryMessage] = []
        """The earlier messages it was started with (what its LLM would see)."""
        self.apologies = 0

    @property
    def closed(self) -> bool:
        return self.close_calls > 0

    def set_session_type(self, session_type: SessionType) -> None:
        self.session_type_calls.append(session_type)
        self.session_type = session_type

    def effective(self) -> EffectiveConfig:
        return expected_effective(self.session_type)

    def apologize(self) -> None:
        self.apologies += 1

    async def aclose(self) -> None:
        self.close_calls += 1
        if self.close_delay:
            await asyncio.sleep(self.close_delay)
        if self.close_error is not None:
            raise self.close_error


class FakePipelineFactory:
    """Starts :class:`FakePipeline`s; can fail or hold a start for chosen identities."""

    def __init__(self, *, close_delay: float = 0.0) -> None:
        self.close_delay = close_delay
        self.started: list[FakePipeline] = []
        self.fail: dict[str, Exception] = {}
        self.hold: dict[str, asyncio.Event] = {}
        self.cancelled: list[str] = []
        self.starting = asyncio.Event()
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True

    @property
    def open_pipelines(self) -> list[FakePipeline]:
        return [p for p in self.started if not p.closed]

    async def start(
        self,
        *,
        surface: Any,
        participant: rtc.RemoteParticipant,
        session_type: SessionType = "voice-vad",
        history: Any = (),
        events: Any = None,
        log: Any = None,
    ) -> FakePipeline:
        identity = participant.identity
        self.starting.set()
        if (gate := self.hold.get(identity)) is not None:
            try:
                await gate.wait()
            except asyncio.CancelledError:
                self.cancelled.append(identity)
                raise
        if (error := self.fail.get(identity)) is not None:
            raise error
        pipeline = FakePipeline(identity, session_type=session_type, close_delay=self.close_delay)
        pipeline.events = events
        pipeline.history = list(history)
        self.started.append(pipeline)
        return pipeline


def report(session: ParticipantSession, message: HistoryMessage) -> None:
    """``session``'s (fake) pipeline reports a message of its conversation."""
    assert isinstance(session.pipeline, FakePipeline) and session.pipeline.events is not None
    session.pipeline.events.message_added(message)


def fake_factory(settings: Any, proc: Any) -> FakePipelineFactory:
    """Stands in for ``worker.build_pipeline_factory`` in entrypoint tests."""
    return FakePipelineFactory()


def slow_closing_factory(settings: Any, proc: Any) -> FakePipelineFactory:
    """As :func:`fake_factory`, with pipelines that take as long to close as real ones."""
    return FakePipelineFactory(close_delay=0.5)
