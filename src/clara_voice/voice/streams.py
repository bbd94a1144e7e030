"""StreamDispatch: the room's text and byte stream handlers, by sender.

livekit's ``Room`` takes one handler per stream topic; clara runs a session per
participant, each of which may want a handler for the same topic (livekit's pre-connect
audio, the chat router). So the room gets one handler per topic from here, which hands
each incoming stream to its sender's own handler.

Whatever a client sends is untrusted, and a livekit stream reader is costly until it is
closed: it stays subscribed to every FFI event of the process (audio frames included) and
keeps the chunks that arrive. So every stream clara does not read to its end is closed at
once:

- from a sender without a handler for that topic (no session, or not that kind of input);
- over the sender's stream budget (``STREAM_BURST`` at once, then ``STREAM_PER_SECOND``,
  per topic; the budget outlives a leave and rejoin of the same identity);
- past the handler's byte bound while it is read (the reader then ends with
  :class:`StreamTooLarge`);
- still open when its sender's handler is removed, or when the dispatch closes.

Streams on a topic nobody registered are disposed by livekit itself. Each refusal is
logged through the room's :class:`~clara_voice.voice.notices.RefusalLog` (rate-limited).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from livekit import rtc

from clara_voice._ratelimit import RateLimits
from clara_voice.voice.notices import RefusalLog

StreamKind = Literal["text", "byte"]
StreamHandler = Callable[[Any, str], None]

STREAM_BURST, STREAM_PER_SECOND = 5.0, 1.0
"""Streams per sender and topic: 5 at once, then one a second."""
DEFAULT_MAX_BYTES = 1 << 20
"""Most bytes read of one stream, unless its handler says otherwise."""


class StreamTooLarge(rtc.StreamError):
    """A stream went past the bound its handler set; it was closed."""


class BoundedReader:
    """A stream reader that ends with :class:`StreamTooLarge` (and is closed) past
    ``max_bytes``.

    It stands in for livekit's reader: ``info``, async iteration, ``read_all`` (text),
    ``close`` and ``aclose``.
    """

    def __init__(self, reader: Any, *, max_bytes: int, on_done: Callable[[Any], None]) -> None:
        self._reader = reader
        self._max_bytes = max_bytes
        self._on_done = on_done
        self._read = 0
        self._done = False

    @property
    def info(self) -> Any:
        return self._reader.info

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        try:
            chunk = await self._reader.__anext__()
        except BaseException:
            self._finish()
            raise
        self._read += len(chunk.encode()) if isinstance(chunk, str) else len(chunk)
        if self._read > self._max_bytes:
            self.close()
            raise StreamTooLarge(f"the stream is over {self._max_bytes} bytes")
        return chunk

    async def read_all(self) -> str:
        return "".join([chunk async for chunk in self])

    def close(self) -> None:
        """Stop reading: the stream's subscription and chunks are released now."""
        if not self._done:
            self._reader.close()
        self._finish()

    async def aclose(self) -> None:
        self.close()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._on_done(self)


class StreamDispatch:
    """One room handler per (kind, topic), dispatching by sender; see the module."""

    def __init__(
        self,
        room: rtc.Room,
        *,
        refusals: RefusalLog,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._room = room
        self._refusals = refusals
        self._clock = clock
        self._handlers: dict[tuple[StreamKind, str], dict[str, tuple[StreamHandler, int]]] = {}
        self._limits: dict[tuple[StreamKind, str], RateLimits] = {}
        self._open: dict[str, set[BoundedReader]] = {}
        self.refused: Counter[str] = Counter()
        """Streams closed unread, by reason (``no_handler``, ``rate_limited``) and those
        ended past their bound (``too_large``)."""

    def add(
        self,
        kind: StreamKind,
        topic: str,
        identity: str,
        handler: StreamHandler,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        rate_limited: bool = True,
    ) -> None:
        """Hand ``identity``'s streams on ``topic`` to ``handler`` (read at most
        ``max_bytes``; within the stream budget unless the handler keeps a budget of its
        own, ``rate_limited=False``); one handler per sender and topic."""
        key = (kind, topic)
        if key not in self._handlers:
            self._handlers[key] = {}
            if rate_limited:
                self._limits.setdefault(
                    key,
                    RateLimits(capacity=STREAM_BURST, rate=STREAM_PER_SECOND, clock=self._clock),
                )
            dispatch = self._dispatcher(key)
            if kind == "byte":
                self._room.register_byte_stream_handler(topic, dispatch)
            else:
                self._room.register_text_stream_handler(topic, dispatch)
        if identity in self._handlers[key]:
            raise ValueError(f"{topic!r} already has a handler for {identity!r}")
        self._handlers[key][identity] = (handler, max_bytes)

    def remove(self, kind: StreamKind, topic: str, identity: str) -> None:
        """Stop handing ``identity``'s streams on ``topic`` to its handler."""
        key = (kind, topic)
        by_identity = self._handlers.get(key)
        if by_identity is None or by_identity.pop(identity, None) is None:
            return
        if not any(identity in handlers for handlers in self._handlers.values()):
            for reader in list(self._open.pop(identity, ())):
                reader.close()
        if not by_identity:
            del self._handlers[key]
            self._unregister(key)

    def open_readers(self) -> int:
        """Streams handed to a handler and not yet finished."""
        return sum(len(readers) for readers in self._open.values())

    def close(self) -> None:
        """Unregister every topic and close every open stream; safe to call twice."""
        for key in list(self._handlers):
            self._unregister(key)
        self._handlers.clear()
        for readers in list(self._open.values()):
            for reader in list(readers):
                reader.close()
        self._open.clear()

    def _unregister(self, key: tuple[StreamKind, str]) -> None:
        kind, topic = key
        if kind == "byte":
            self._room.unregister_byte_stream_handler(topic)
        else:
            self._room.unregister_text_stream_handler(topic)

    def _dispatcher(self, key: tuple[StreamKind, str]) -> StreamHandler:
        def dispatch(reader: Any, sender: str) -> None:
            entry = self._handlers.get(key, {}).get(sender)
            if entry is None:
                self._refuse(
                    reader,
                    sender,
                    key,
                    "no_handler",
                    "stream from a sender without a session ignored",
                )
                return
            limits = self._limits.get(key)
            if limits is not None and not limits.admit(sender):
                self._refuse(reader, sender, key, "rate_limited", "stream refused: too many")
                return
            handler, max_bytes = entry
            bounded = BoundedReader(reader, max_bytes=max_bytes, on_done=self._finished(sender))
            self._open.setdefault(sender, set()).add(bounded)
            handler(bounded, sender)

        return dispatch

    def _finished(self, sender: str) -> Callable[[Any], None]:
        def done(reader: Any) -> None:
            readers = self._open.get(sender)
            if readers is not None:
                readers.discard(reader)
                if not readers:
                    del self._open[sender]
            if reader._read > reader._max_bytes:
                self.refused["too_large"] += 1

        return done

    def _refuse(
        self, reader: Any, sender: str, key: tuple[StreamKind, str], reason: str, message: str
    ) -> None:
        reader.close()
        self.refused[reason] += 1
        self._refusals.refused(message, participant=sender, topic=key[1][:64], error=reason)


__all__ = [
    "DEFAULT_MAX_BYTES",
    "BoundedReader",
    "StreamDispatch",
    "StreamKind",
    "StreamTooLarge",
]
