"""A reference team backend on 127.0.0.1 speaking docs/backend-api.md, for HttpBackend tests.

:class:`LoopbackBackend` is an aiohttp server on an ephemeral port, used with
``async with LoopbackBackend(token=...) as server:``; ``server.base_url`` is its API root
(``http://127.0.0.1:PORT`` plus the optional ``prefix``). It keeps everything in memory:

* ``POST /agents/joined`` — ``{"room", "conversation_id"}``; answers the proposed id, or a
  new ``conv-…`` id when it is empty, and makes the conversation known.
* ``GET /conversations/{id}/messages?participant=P&limit=N`` — the last N messages of
  :attr:`conversations` ``[id]`` that belong to participant P, oldest first; 404 for an
  unknown conversation.
* ``POST /turns``, ``/participant-events``, ``/sessions`` — stores the body under its
  ``key`` (which the ``Idempotency-Key`` header must carry, percent-encoded) in
  :attr:`stored`: 201 when
  new, 409 when the key is already stored (whatever the body). A stored turn is appended
  to its conversation's messages, so a later session can load it.

With a ``token``, a request without ``Authorization: Bearer <token>`` gets 401. Every
request is recorded in :attr:`requests` (method, path, query, headers, body, what the
server did with it and the status it answered), failed or not.

Failure injection: :meth:`fail` queues ``status_500``/``status_400``/``status_429`` (that
status), ``slow`` (serve normally after ``seconds``; the work is done even when the client
has given up), ``drop`` (read the request, then cut the connection without answering) or
``bad_json`` (200 with a body that is not JSON) for the next ``count`` requests;
:meth:`answer` queues any canned status and body. ``fail("down")`` stops listening at
once and cuts open connections, so connects are refused until ``await server.up()``
listens again on the same port.

Tests wait on what the server saw with :meth:`LoopbackBackend.wait_for` (a condition with
a timeout), never by sleeping. Leaving ``async with`` wakes slow handlers, closes every
connection and listener, and cancels whatever handler is left, waiting for all of them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import unquote

from aiohttp import web
from multidict import CIMultiDict

from clara_voice._lifecycle import AsyncService
from testkit.peer import PeerHandlers

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_TIMEOUT = 5.0
Failure = Literal["status_500", "status_400", "status_429", "slow", "drop", "bad_json", "down"]

_STATUS_FAILURES = {"status_500": 500, "status_400": 400, "status_429": 429}
RECORD_ENDPOINTS = ("turns", "participant-events", "sessions")


@dataclass
class BackendRequest:
    """One request the server received, and what it did with it."""

    method: str
    path: str  # decoded, without the prefix
    segments: list[str]  # the path's segments, each decoded (a %2F stays inside its segment)
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: bytes
    outcome: str  # "ok", the failure mode it was given, "canned" or "status_401"
    status: int | None = None  # what it answered; None when it never answered

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class StoredRecord:
    """One record the server stored, under its idempotency key."""

    endpoint: str  # "turns", "participant-events" or "sessions"
    key: str
    body: dict[str, Any]


@dataclass(frozen=True)
class _Queued:
    mode: str
    seconds: float = 0.0
    status: int = 0
    body: str = ""


class _BadRequest(Exception):
    pass


class LoopbackBackend(PeerHandlers, AsyncService):
    """A team backend stand-in on 127.0.0.1; use ``async with``."""

    default_timeout = DEFAULT_TIMEOUT

    def __init__(
        self, *, token: str | None = None, prefix: str = "", host: str = "127.0.0.1"
    ) -> None:
        self.token = token
        self.prefix = prefix.rstrip("/")
        self.host = host
        self.port = 0
        self.requests: list[BackendRequest] = []
        self.stored: dict[str, StoredRecord] = {}
        self.conversations: dict[str, list[dict[str, Any]]] = {}
        """Messages (``{"role", "text", "at"}``) per known conversation, oldest first."""
        self.joined: list[dict[str, Any]] = []
        self._queue: deque[_Queued] = deque()
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._closed_listeners: list[asyncio.AbstractServer] = []
        self._init_handlers()
        self._closing = False
        self._wake = asyncio.Event()  # set to cut short the pauses of slow handlers

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("the loopback backend is not started")
        return f"http://{self.host}:{self.port}{self.prefix}"

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._tracked(self._handle))
        self._runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=1.0, access_log=None
        )
        await self._runner.setup()
        await self._listen(0)

    async def aclose(self) -> None:
        self._closing = True
        self._stop_listening()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._cancel_handlers()
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            while self._closed_listeners:
                await self._closed_listeners.pop().wait_closed()

    async def up(self) -> None:
        """Listen again on the same port after ``fail("down")``."""
        if self._closing or self.is_up:
            return
        await self._listen(self.port)

    async def _listen(self, port: int) -> None:
        assert self._runner is not None and self._runner.server is not None
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self._runner.server, self.host, port)
        self._listener = server
        self.port = server.sockets[0].getsockname()[1]

    def _stop_listening(self) -> None:
        """Stop accepting now, and cut every open connection (a crashed backend)."""
        server, self._listener = self._listener, None
        if server is not None:
            server.close()  # the listening socket is closed before this returns
            self._closed_listeners.append(server)
        if self._runner is not None and self._runner.server is not None:
            for connection in self._runner.server.connections:
                connection.force_close()
        self._wake.set()  # slow handlers give up without answering
        if not self._closing:
            self._wake = asyncio.Event()

    # -- failures -------------------------------------------------------------------------------

    def fail(self, mode: Failure, count: int = 1, *, seconds: float = 2.0, body: str = "") -> None:
        """Give the next ``count`` requests ``mode`` (``seconds`` is the delay of ``slow``,
        ``body`` the body of the ``status_*`` modes). ``down`` acts at once; ``count`` is
        ignored and :meth:`up` ends it."""
        if mode == "down":
            self._stop_listening()
            return
        if mode in _STATUS_FAILURES:
            self.answer(_STATUS_FAILURES[mode], body or f"injected {mode}", count, mode=mode)
            return
        self._queue.extend(_Queued(mode=mode, seconds=seconds) for _ in range(count))

    def answer(self, status: int, body: str = "", count: int = 1, *, mode: str = "canned") -> None:
        """Answer the next ``count`` requests with ``status`` and ``body``, whatever they ask."""
        self._queue.extend(_Queued(mode=mode, status=status, body=body) for _ in range(count))

    # -- observing ------------------------------------------------------------------------------

    def records(self, endpoint: str | None = None) -> list[StoredRecord]:
        """What is stored (for one endpoint), in the order it was stored."""
        return [r for r in self.stored.values() if endpoint in (None, r.endpoint)]

    # -- handling -------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        raw_path = self._api_path(request.rel_url.raw_path)
        api_path = None if raw_path is None else unquote(raw_path)
        denied = self._unauthorized(request)
        queued = self._queue.popleft() if denied is None and self._queue else None
        recorded = BackendRequest(
            method=request.method,
            path=request.path if api_path is None else api_path,
            segments=[unquote(s) for s in (raw_path or "").strip("/").split("/")],
            query=dict(request.query),
            headers=CIMultiDict(request.headers),
            body=body,
            outcome="status_401" if denied is not None else queued.mode if queued else "ok",
        )
        self.requests.append(recorded)
        await self._notify()
        response: web.Response | None
        if denied is not None:
            response = denied
        elif queued is None or queued.mode == "slow":
            if queued is not None and not await self._pause(queued.seconds):
                response = None  # went down or closing meanwhile: never answer
            elif api_path is None:
                response = _error(404, "outside the API")
            else:
                response = self._serve(recorded)
        elif queued.mode == "drop":
            response = None
        elif queued.mode == "bad_json":
            response = web.Response(status=200, text="<html>oops", content_type="text/html")
        else:
            response = web.Response(status=queued.status, text=queued.body)
        if response is None:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)  # never sent: the connection is gone
        recorded.status = response.status
        return response

    def _api_path(self, path: str) -> str | None:
        if not self.prefix:
            return path
        if path.startswith(self.prefix + "/"):
            return path[len(self.prefix) :]
        return None

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``; False when the server went down or started closing meanwhile."""
        wake = self._wake
        try:
            await asyncio.wait_for(wake.wait(), seconds)
        except TimeoutError:
            return self.is_up and not self._closing
        return False

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.token is None:
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token == self.token:
            return None
        return _error(401, "missing or wrong bearer token")

    def _serve(self, request: BackendRequest) -> web.Response:
        method, path, parts = request.method, request.path, request.segments
        try:
            if method == "POST" and path == "/agents/joined":
                return self._joined(_object(request.body))
            if method == "GET" and len(parts) == 3 and parts[::2] == ["conversations", "messages"]:
                return self._messages(parts[1], request.query)
            if method == "POST" and len(parts) == 1 and parts[0] in RECORD_ENDPOINTS:
                key = request.headers.get("Idempotency-Key")
                return self._store(parts[0], _object(request.body), key)
        except _BadRequest as exc:
            return _error(400, str(exc))
        return _error(404, f"no route for {method} {path}")

    def _joined(self, body: dict[str, Any]) -> web.Response:
        room, conversation_id = body.get("room"), body.get("conversation_id")
        if not isinstance(room, str) or not room:
            raise _BadRequest("room must be a non-empty string")
        if not isinstance(conversation_id, str):
            raise _BadRequest("conversation_id must be a string")
        conversation_id = conversation_id or f"conv-{uuid.uuid4().hex[:12]}"
        self.conversations.setdefault(conversation_id, [])
        self.joined.append({"room": room, "conversation_id": conversation_id})
        return web.json_response({"conversation_id": conversation_id})

    def _messages(self, conversation_id: str, query: dict[str, str]) -> web.Response:
        try:
            limit = int(query.get("limit", ""))
        except ValueError:
            raise _BadRequest("limit must be an integer") from None
        if limit < 1:
            raise _BadRequest("limit must be at least 1")
        participant = query.get("participant")
        if not participant:
            raise _BadRequest("participant is required: history is per participant")
        if conversation_id not in self.conversations:
            return _error(404, "unknown conversation")
        own = [m for m in self.conversations[conversation_id] if m["participant"] == participant]
        return web.json_response({"messages": own[-limit:]})

    def _store(
        self, endpoint: str, body: dict[str, Any], idempotency_key: str | None
    ) -> web.Response:
        key = body.get("key")
        if not isinstance(key, str) or not key:
            raise _BadRequest("key must be a non-empty string")
        if idempotency_key is None or unquote(idempotency_key) != key:
            raise _BadRequest("the Idempotency-Key header must be the body's key, percent-encoded")
        if key in self.stored:
            return web.json_response({"key": key, "status": "duplicate"}, status=409)
        _check_record(endpoint, body)
        self.stored[key] = StoredRecord(endpoint=endpoint, key=key, body=body)
        if endpoint == "turns":
            self.conversations.setdefault(body["conversation_id"], []).append(
                {
                    "role": body["role"],
                    "text": body["text"],
                    "at": body["at"],
                    "participant": body["participant"],
                }
            )
        return web.json_response({"key": key, "status": "stored"}, status=201)


def _object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        raise _BadRequest("the body is not JSON") from None
    if not isinstance(data, dict):
        raise _BadRequest("the body is not a JSON object")
    return data


def _check_record(endpoint: str, body: dict[str, Any]) -> None:
    """The fields this backend uses must be there (a real one would check more)."""
    required = {"conversation_id": str, "room": str}
    if endpoint == "turns":
        required |= {"role": str, "text": str, "at": str}
    elif endpoint == "participant-events":
        required |= {"participant": str, "event": str, "at": str}
    for name, kind in required.items():
        if not isinstance(body.get(name), kind):
            raise _BadRequest(f"{name} must be a {kind.__name__}")
    if endpoint == "turns" and body["role"] not in ("user", "assistant"):
        raise _BadRequest("role must be user or assistant")
    if endpoint == "participant-events" and body["event"] not in ("connected", "disconnected"):
        raise _BadRequest("event must be connected or disconnected")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
