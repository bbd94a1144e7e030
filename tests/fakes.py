"""The test kit: a fake room, real participants, a fake pipeline factory.

``FakeRoom`` subclasses livekit's ``rtc.EventEmitter`` and emits what ``rtc.Room`` emits,
with the same arguments and in the same order (``remote_participants`` is updated before
``participant_connected`` and after ``participant_disconnected``'s pop, as the SDK does).
Participants are livekit's real ``rtc.RemoteParticipant`` built from protocol info with no
native handle, so every property the agent reads is the SDK's own.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from livekit import rtc
from livekit.rtc._proto import handle_pb2, participant_pb2

from clara_voice.sessions import ParticipantSession

_sids = itertools.count(1)


def make_participant(
    identity: str,
    *,
    kind: int = rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
    attributes: Mapping[str, str] | None = None,
    metadata: str = "",
    sid: str | None = None,
) -> rtc.RemoteParticipant:
    """A real ``rtc.RemoteParticipant`` (no FFI handle behind it)."""
    info = participant_pb2.ParticipantInfo(
        sid=sid or f"PA_{next(_sids)}",
        identity=identity,
        name=identity,
        metadata=metadata,
        kind=kind,  # type: ignore[arg-type]
        attributes=dict(attributes or {}),
    )
    owned = participant_pb2.OwnedParticipant(handle=handle_pb2.FfiOwnedHandle(id=0), info=info)
    return rtc.RemoteParticipant(owned)


class FakeLocalParticipant:
    """The agent's own participant in the fake room (RPC registry as in the SDK)."""

    def __init__(self, identity: str = "agent-clara") -> None:
        self.identity = identity
        self.sid = "PA_agent"
        self.attributes: dict[str, str] = {}
        self.rpc_handlers: dict[str, Callable[[rtc.RpcInvocationData], Awaitable[str]]] = {}

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
    """A chat message as the SDK's TextStreamReader hands it to a handler."""

    def __init__(self, text: str, topic: str) -> None:
        self._text = text
        self.info = rtc.TextStreamInfo(
            stream_id=f"TS_{next(_sids)}",
            mime_type="text/plain",
            topic=topic,
            timestamp=0,
            size=len(text),
            attributes={},
            attachments=[],
        )

    async def read_all(self) -> str:
        return self._text


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

    def send_text(self, identity: str, text: str, topic: str = "lk.chat") -> None:
        """``identity`` sends a text stream on ``topic`` (dropped if nobody handles it)."""
        if (handler := self.text_stream_handlers.get(topic)) is not None:
            handler(FakeTextStreamReader(text, topic), identity)

    def listener_count(self) -> int:
        return sum(len(callbacks) for callbacks in self._events.values())


class FakePipeline:
    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.relinked: list[str] = []
        self.close_calls = 0
        self.close_error: Exception | None = None

    @property
    def closed(self) -> bool:
        return self.close_calls > 0

    def relink(self, identity: str) -> None:
        self.relinked.append(identity)

    async def aclose(self) -> None:
        self.close_calls += 1
        if self.close_error is not None:
            raise self.close_error


class FakePipelineFactory:
    """Starts :class:`FakePipeline`s; can fail or hold a start for chosen identities."""

    def __init__(self) -> None:
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
        room: Any,
        participant: rtc.RemoteParticipant,
        session: ParticipantSession,
        observer: Any = None,
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
        pipeline = FakePipeline(identity)
        self.started.append(pipeline)
        return pipeline


def fake_factory(settings: Any, proc: Any) -> FakePipelineFactory:
    """Stands in for ``worker.build_pipeline_factory`` in entrypoint tests."""
    return FakePipelineFactory()
