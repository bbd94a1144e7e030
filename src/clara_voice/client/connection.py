"""The smoke-test client's connection: join, and rejoin with backoff (seed 001, client side).

:class:`Connection` keeps one participant in a room. An unexpected disconnect (any reason
but ``CLIENT_INITIATED``) or a failed connect moves it to ``reconnecting``; it retries after
``base_delay * 2**n`` seconds (1, 2, 4, 8, 16 by default), at most ``max_attempts`` times,
back to ``connected`` on success (the attempt counter reset), and after the last failed
attempt it ends in ``failed`` with the seed's message. livekit's own resume (the room's
``reconnecting``/``reconnected`` events) maps to ``reconnecting``/``connected`` with no
retries of ours.

One supervisor task makes every connect, so two connects never overlap however many
disconnect events arrive: room event handlers only record what happened and wake it. Each
attempt uses a new room from ``room_factory``; handlers of a room dropped are removed, and
events of any room but the current one are ignored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Protocol

from livekit import rtc
from livekit.agents.utils import aio
from livekit.rtc.room import EventTypes as RoomEvent

from clara_voice.logging import get_logger

ClientState = Literal["connecting", "connected", "reconnecting", "failed", "disconnected"]

CONNECTION_LOST_MESSAGE = (
    "Connection lost. Please check your internet and try starting a new session."
)

_FINAL_STATES: frozenset[ClientState | None] = frozenset({"failed", "disconnected"})
_JOIN_GRACE = 5.0  # seconds ``on_joined`` (publishing) may add to the connect's own timeout
_log = get_logger("clara_voice.client")


class LocalParticipantLike(Protocol):
    async def publish_track(
        self, track: rtc.LocalTrack, options: rtc.TrackPublishOptions = ...
    ) -> Any: ...

    async def perform_rpc(
        self,
        *,
        destination_identity: str,
        method: str,
        payload: str,
        response_timeout: float | None = None,
    ) -> str: ...


class RoomLike(Protocol):
    """What the client uses of ``rtc.Room`` (tests pass a fake)."""

    @property
    def local_participant(self) -> LocalParticipantLike: ...

    def on(self, event: RoomEvent, callback: Callable[..., Any]) -> Callable[..., Any]: ...

    def off(self, event: RoomEvent, callback: Callable[..., Any]) -> None: ...

    async def connect(self, url: str, token: str, options: rtc.RoomOptions = ...) -> None: ...

    async def disconnect(self) -> None: ...


class ConnectFailed(Exception):
    """One connect attempt failed; ``retryable``: the connection tries again with backoff."""

    retryable = True

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ClientStateChanged:
    """One move of the client's connection state (``message``: what a user is shown)."""

    state: ClientState
    reason: str | None = None
    message: str | None = None


class Connection:
    """Keeps a participant in a room, reconnecting with exponential backoff.

    ``on_joined(room)`` runs inside each attempt, after the room is joined (an error there
    fails the attempt); ``handlers`` receive the current room's other events.
    """

    def __init__(
        self,
        *,
        url: str,
        token: str,
        on_state: Callable[[ClientStateChanged], None],
        on_joined: Callable[[RoomLike], Awaitable[None]] | None = None,
        handlers: Mapping[RoomEvent, Callable[..., None]] | None = None,
        room_factory: Callable[[], RoomLike] = rtc.Room,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        base_delay: float = 1.0,
        max_attempts: int = 5,
        connect_timeout: float = 10.0,
    ) -> None:
        self.reconnect_attempts = 0
        """Attempts of the reconnection under way (0 once connected)."""
        self.reconnections = 0
        self.connected = asyncio.Event()
        """Set once the first connect succeeded."""
        self.settled = asyncio.Event()
        """Set whenever the state is not ``reconnecting``."""
        self._url, self._token = url, token
        self._on_state, self._on_joined = on_state, on_joined
        self._extra_handlers = dict(handlers or {})
        self._room_factory, self._sleep = room_factory, sleep
        self._base_delay, self._max_attempts = base_delay, max_attempts
        self._connect_timeout = connect_timeout
        self._state: ClientState | None = None
        self._room: RoomLike | None = None
        self._handlers: list[tuple[RoomEvent, Callable[..., None]]] = []
        self._lost = asyncio.Event()  # the current room dropped: the supervisor reconnects
        self._lost_reason = ""
        self._retrying = False
        self._supervisor_atask: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def state(self) -> ClientState | None:
        return self._state

    @property
    def room(self) -> RoomLike | None:
        """The room joined, or being joined; ``None`` between attempts."""
        return self._room

    @property
    def retry_budget(self) -> float:
        """The longest a whole reconnection can take, in seconds."""
        attempt = self._connect_timeout + _JOIN_GRACE
        return self._base_delay * (2.0**self._max_attempts - 1) + self._max_attempts * attempt

    async def start(self) -> None:
        if self._supervisor_atask is None and not self._closed:
            self._supervisor_atask = asyncio.create_task(
                self._supervise(), name="clara_voice.client.connection"
            )
            self._supervisor_atask.add_done_callback(self._on_supervisor_done)

    async def aclose(self) -> None:
        """Stop reconnecting and leave the room (state ``disconnected``); safe twice."""
        if self._closed:
            return
        self._closed = True
        if self._supervisor_atask is not None:
            await aio.cancel_and_wait(self._supervisor_atask)
        await self._drop_room()
        if self._supervisor_atask is not None:
            self._set_state("disconnected")

    # -- the supervisor ------------------------------------------------------------------

    async def _supervise(self) -> None:
        self._set_state("connecting")
        try:
            await self._connect()
        except ConnectFailed as exc:
            reason = exc.reason
        else:
            self._set_state("connected")
            reason = await self._wait_lost()
        while (reason := await self._reconnect(reason)) == "":
            reason = await self._wait_lost()
        self._fail(reason)

    async def _wait_lost(self) -> str:
        self.connected.set()
        await self._lost.wait()
        return self._lost_reason

    async def _reconnect(self, reason: str) -> str:
        """Retry with backoff: ``""`` once connected, else the last attempt's failure."""
        self._retrying = True
        try:
            self._set_state("reconnecting", reason=reason)
            await self._drop_room()
            self.reconnect_attempts = 0
            while self.reconnect_attempts < self._max_attempts:
                delay = self._base_delay * 2.0**self.reconnect_attempts
                self.reconnect_attempts += 1
                context = {"attempt": self.reconnect_attempts, "of": self._max_attempts}
                _log.info("reconnecting", extra={**context, "delay": delay, "reason": reason})
                await self._sleep(delay)
                try:
                    await self._connect()
                except ConnectFailed as exc:
                    reason = exc.reason
                    _log.warning("reconnection attempt failed", extra={**context, "reason": reason})
                    continue
                self.reconnect_attempts = 0
                self.reconnections += 1
                self._set_state("connected")
                return ""
            return reason
        finally:
            self._retrying = False

    async def _connect(self) -> None:
        """One attempt: a new room, joined, then ``on_joined``."""
        self._lost.clear()
        room = self._room_factory()
        self._attach(room)
        options = rtc.RoomOptions(auto_subscribe=True, connect_timeout=self._connect_timeout)
        try:
            async with asyncio.timeout(self._connect_timeout + _JOIN_GRACE):
                await room.connect(self._url, self._token, options)
                if self._on_joined is not None:
                    await self._on_joined(room)
        except Exception as exc:  # whatever stopped this attempt, the next one may pass
            await self._drop_room()
            detail = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise ConnectFailed(f"{type(exc).__name__}: {detail}".rstrip(": ")) from exc

    async def _drop_room(self) -> None:
        room, self._room = self._room, None
        if room is None:
            return
        for event, handler in self._handlers:
            room.off(event, handler)
        self._handlers = []
        try:
            await room.disconnect()
        except Exception as exc:
            _log.warning("error while leaving the room", exc_info=exc)

    def _attach(self, room: RoomLike) -> None:
        self._handlers = [
            ("disconnected", partial(self._on_disconnected, room)),
            ("reconnecting", partial(self._on_resuming, room)),
            ("reconnected", partial(self._on_resumed, room)),
        ]
        for event, handler in self._extra_handlers.items():
            self._handlers.append((event, partial(self._forward, room, handler)))
        for event, callback in self._handlers:
            room.on(event, callback)
        self._room = room

    def _set_state(
        self, state: ClientState, *, reason: str | None = None, message: str | None = None
    ) -> None:
        if self._state == state or self._state in _FINAL_STATES:
            return
        self._state = state
        if state == "reconnecting":
            self.settled.clear()
        else:
            self.settled.set()
        _log.info("connection state changed", extra={"state": state, "reason": reason})
        self._on_state(ClientStateChanged(state, reason, message))

    def _fail(self, reason: str) -> None:
        self._set_state("failed", reason=reason, message=CONNECTION_LOST_MESSAGE)

    def _on_supervisor_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.error("connection supervisor failed", exc_info=exc)
            self._fail(f"{type(exc).__name__}: {exc}")

    # -- room events (synchronous: they record what happened and wake the supervisor) -----

    def _on_disconnected(self, room: RoomLike, reason: int) -> None:
        if room is not self._room:
            return
        if reason == rtc.DisconnectReason.CLIENT_INITIATED:  # not by us: ours are detached
            self._set_state("disconnected", reason="client_initiated")
            return
        self._lost_reason = rtc.DisconnectReason.Name(reason).lower()  # type: ignore[arg-type]
        self._lost.set()

    def _on_resuming(self, room: RoomLike) -> None:
        if room is self._room and not self._retrying and self._state == "connected":
            self._set_state("reconnecting", reason="resuming")

    def _on_resumed(self, room: RoomLike) -> None:
        resuming = self._state == "reconnecting" and not self._retrying
        if room is self._room and resuming and not self._lost.is_set():
            self._set_state("connected")

    def _forward(self, room: RoomLike, handler: Callable[..., None], *args: Any) -> None:
        if room is self._room:
            handler(*args)
