"""A loopback peer speaking LiveKit's agent-worker protocol, for real-worker tests.

:class:`LoopbackLiveKit` is an aiohttp server on 127.0.0.1 (ephemeral port) that plays
the part of a LiveKit server towards an agent worker, exactly as livekit's worker client
(``livekit.agents.worker.AgentServer._connection_task`` and ``_run_ws``) expects it:

* ``GET /agent`` upgrades to a websocket after checking ``Authorization: Bearer <jwt>``
  with :class:`livekit.api.TokenVerifier`; a bad token gets HTTP 401 (recorded in
  :attr:`LoopbackLiveKit.auth_rejections`);
* the worker's first message is a ``WorkerMessage.register``, answered with a
  ``ServerMessage.register`` carrying a worker id and server info;
* :meth:`LoopbackLiveKit.offer_job` sends an ``availability`` request for a JT_ROOM job,
  waits for the worker's ``availability`` answer and, when it accepts, sends the
  ``assignment`` with this peer's URL and a room-join token for the identity it answered;
* every later worker message (``update_worker``, ``update_job``, ``ping``…) is recorded;
  ``ping`` is answered with ``pong``;
* room signalling (``/rtc``, ``/rtc/validate``, the ``/rtc/v1`` paths livekit-rtc 1.x
  uses, anything under ``/rtc``) is refused with an HTTP error (403 unless told), so a
  job process's ``rtc.Room.connect`` fails; each refused request is recorded, with the
  token it carried, in :attr:`LoopbackLiveKit.rtc_refusals`. Clearing
  :attr:`LoopbackLiveKit.rtc_gate` holds the refusals back, which keeps a job in its
  connecting state for as long as a test needs to look at the worker (keep it short:
  livekit-rtc gives up on a signal connection after 5 s).

Tests wait on what the peer saw with :meth:`LoopbackLiveKit.wait_for` (a condition with a
timeout), never by sleeping.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
from aiohttp import web
from livekit import api
from livekit.protocol import agent, models

from clara_voice._lifecycle import AsyncService
from testkit.peer import PeerHandlers

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
TERMINAL_JOB_STATUSES = frozenset(
    {agent.JobStatus.JS_SUCCESS, agent.JobStatus.JS_FAILED, agent.JobStatus.JS_CANCELLED}
)


@dataclass(frozen=True)
class ReceivedMessage:
    """One message a worker sent over its agent websocket."""

    connection: int
    at: float
    message: agent.WorkerMessage

    @property
    def kind(self) -> str | None:
        which: str | None = self.message.WhichOneof("message")
        return which


@dataclass(frozen=True)
class RejectedRequest:
    """A request this peer answered (or is about to answer) with an HTTP error."""

    path: str
    status: int
    reason: str
    at: float
    query: dict[str, str] = field(default_factory=dict)
    token: str | None = None  # the bearer or ``access_token`` JWT the request carried


@dataclass
class WorkerConnection:
    """One websocket connection of a worker to ``/agent``."""

    number: int
    ws: web.WebSocketResponse
    worker_id: str = ""
    register: agent.RegisterWorkerRequest | None = None
    closed: bool = False


@dataclass(frozen=True)
class OfferedJob:
    """What :meth:`LoopbackLiveKit.offer_job` offered and what the worker answered."""

    job: agent.Job
    answer: agent.AvailabilityResponse
    token: str | None  # the room token sent with the assignment; None when not assigned

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def room(self) -> str:
        return self.job.room.name

    @property
    def assigned(self) -> bool:
        return self.token is not None


class LoopbackLiveKit(PeerHandlers, AsyncService):
    """A LiveKit server stand-in on 127.0.0.1 for one worker; use ``async with``."""

    def __init__(
        self,
        *,
        api_key: str,
        api_secret: str,
        rtc_status: int = 403,
        host: str = "127.0.0.1",
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.rtc_status = rtc_status
        self.host = host
        self.port = 0

        self.received: list[ReceivedMessage] = []
        self.auth_rejections: list[RejectedRequest] = []
        self.rtc_refusals: list[RejectedRequest] = []
        self.connections: list[WorkerConnection] = []
        self.registered = asyncio.Event()  # set once a worker has registered
        # cleared: requests under /rtc wait (recorded) until it is set again, so a test can
        # look at the worker while a job is still connecting to its room
        self.rtc_gate = asyncio.Event()
        self.rtc_gate.set()

        self._answers: dict[str, asyncio.Future[agent.AvailabilityResponse]] = {}
        self._runner: web.AppRunner | None = None
        self._init_handlers()

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The ``ws://`` URL to give a worker as LIVEKIT_URL."""
        if not self.port:
            raise RuntimeError("the loopback peer is not started")
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/agent", self._agent)
        app.router.add_route("*", "/rtc", self._rtc)
        app.router.add_route("*", "/rtc/{tail:.*}", self._rtc)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def aclose(self) -> None:
        self.rtc_gate.set()
        for connection in self.connections:
            if not connection.ws.closed:
                await connection.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        for answer in self._answers.values():
            answer.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        # handlers end when their socket closes; none may outlive the peer
        await self._cancel_handlers()

    # -- what tests wait on ---------------------------------------------------------------

    async def wait_registered(self, timeout: float = DEFAULT_TIMEOUT) -> WorkerConnection:
        """The worker's current registered connection."""
        await asyncio.wait_for(self.registered.wait(), timeout)
        return await self.wait_for(self.current_connection, timeout)

    def current_connection(self) -> WorkerConnection | None:
        """The latest registered connection that is still open."""
        for connection in reversed(self.connections):
            if connection.worker_id and not connection.closed:
                return connection
        return None

    def messages(self, kind: str) -> list[agent.WorkerMessage]:
        """The worker's messages of one kind (``update_job``, ``update_worker``…), in order."""
        return [m.message for m in self.received if m.kind == kind]

    def job_updates(self, job_id: str) -> list[agent.UpdateJobStatus]:
        return [m.update_job for m in self.messages("update_job") if m.update_job.job_id == job_id]

    async def wait_job_status(
        self,
        job_id: str,
        statuses: Iterable[int],  # agent.JobStatus values
        timeout: float = DEFAULT_TIMEOUT,
    ) -> agent.UpdateJobStatus:
        """The first ``update_job`` of ``job_id`` with one of ``statuses``."""
        wanted = frozenset(statuses)

        def found() -> agent.UpdateJobStatus | None:
            return next((u for u in self.job_updates(job_id) if u.status in wanted), None)

        return await self.wait_for(found, timeout)

    async def wait_job_ended(
        self, job_id: str, timeout: float = DEFAULT_TIMEOUT
    ) -> agent.UpdateJobStatus:
        """The ``update_job`` reporting ``job_id`` as succeeded, failed or cancelled."""
        return await self.wait_job_status(job_id, TERMINAL_JOB_STATUSES, timeout)

    # -- offering jobs --------------------------------------------------------------------

    async def offer_job(self, room: str, timeout: float = DEFAULT_TIMEOUT) -> OfferedJob:
        """Offer a room job to the registered worker; assign it if the worker accepts.

        Returns the job, the worker's availability answer and, when assigned, the room
        token sent with the assignment.
        """
        connection = await self.wait_registered(timeout)
        job = agent.Job(
            id=_short_id("AJ_"),
            dispatch_id=_short_id("AD_"),
            type=agent.JobType.JT_ROOM,
            room=models.Room(sid=_short_id("RM_"), name=room),
        )
        answer_future = asyncio.get_running_loop().create_future()
        self._answers[job.id] = answer_future
        try:
            await self._send(
                connection, agent.ServerMessage(availability=agent.AvailabilityRequest(job=job))
            )
            answer = await asyncio.wait_for(answer_future, timeout)
        finally:
            self._answers.pop(job.id, None)
        if not answer.available:
            return OfferedJob(job=job, answer=answer, token=None)

        token = (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(answer.participant_identity)
            .with_name(answer.participant_name)
            .with_kind("agent")
            .with_grants(api.VideoGrants(room_join=True, room=room, agent=True))
            .to_jwt()
        )
        assignment = agent.JobAssignment(job=job, url=self.url, token=token)
        await self._send(connection, agent.ServerMessage(assignment=assignment))
        return OfferedJob(job=job, answer=answer, token=token)

    async def terminate_job(self, job_id: str) -> None:
        """Ask the worker to end a job, as LiveKit does when a room closes."""
        connection = await self.wait_registered()
        message = agent.ServerMessage(termination=agent.JobTermination(job_id=job_id))
        await self._send(connection, message)

    # -- the endpoints --------------------------------------------------------------------

    async def _agent(self, request: web.Request) -> web.StreamResponse:
        token = _bearer(request) or ""
        try:
            if not token:
                raise ValueError("no bearer token")
            claims = api.TokenVerifier(self.api_key, self.api_secret).verify(token)
            if claims.video is None or not claims.video.agent:
                raise ValueError("the token has no agent grant")
        except Exception as exc:
            await self._record(
                self.auth_rejections,
                RejectedRequest(
                    path=request.path,
                    status=401,
                    reason=f"{type(exc).__name__}: {exc}",
                    at=time.monotonic(),
                ),
            )
            return web.Response(status=401, text="invalid authorization token")

        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        connection = WorkerConnection(number=len(self.connections) + 1, ws=ws)
        self.connections.append(connection)
        try:
            await self._serve(connection)
        finally:
            connection.closed = True
            for answer in self._answers.values():  # offers to a worker that went away
                if not answer.done():
                    answer.set_exception(ConnectionError("the worker's connection closed"))
            await self._notify()
            if not ws.closed:
                await ws.close()
            if task is not None:
                self._handlers.discard(task)
        return ws

    async def _serve(self, connection: WorkerConnection) -> None:
        async for frame in connection.ws:
            if frame.type != aiohttp.WSMsgType.BINARY:
                continue  # the worker speaks protobuf in binary frames only
            message = agent.WorkerMessage()
            message.ParseFromString(frame.data)
            which = message.WhichOneof("message")
            if which == "register" and not connection.worker_id:
                connection.register = message.register
                connection.worker_id = _short_id("AW_")
                info = models.ServerInfo(
                    edition=models.ServerInfo.Standard,
                    version="loopback",
                    protocol=16,
                    agent_protocol=1,
                    region="loopback",
                    node_id=_short_id("ND_"),
                )
                reply = agent.RegisterWorkerResponse(
                    worker_id=connection.worker_id, server_info=info
                )
                await self._send(connection, agent.ServerMessage(register=reply))
                self.registered.set()
            elif which == "ping":
                pong = agent.WorkerPong(
                    last_timestamp=message.ping.timestamp, timestamp=int(time.time() * 1000)
                )
                await self._send(connection, agent.ServerMessage(pong=pong))
            elif which == "availability":
                answer = self._answers.get(message.availability.job_id)
                if answer is not None and not answer.done():
                    answer.set_result(message.availability)
            await self._record(
                self.received,
                ReceivedMessage(connection=connection.number, at=time.monotonic(), message=message),
            )

    async def _rtc(self, request: web.Request) -> web.Response:
        await self._record(
            self.rtc_refusals,
            RejectedRequest(
                path=request.path,
                status=self.rtc_status,
                reason="room signalling is refused by the loopback peer",
                at=time.monotonic(),
                query=dict(request.query),
                token=_bearer(request) or request.query.get("access_token"),
            ),
        )
        await self.rtc_gate.wait()
        return web.Response(status=self.rtc_status, text="room signalling is not available here")

    # -- helpers --------------------------------------------------------------------------

    async def _send(self, connection: WorkerConnection, message: agent.ServerMessage) -> None:
        await connection.ws.send_bytes(message.SerializeToString())

    async def _record(self, into: list[T], item: T) -> None:
        into.append(item)
        await self._notify()


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _short_id(prefix: str) -> str:
    return prefix + secrets.token_hex(6)


__all__ = [
    "TERMINAL_JOB_STATUSES",
    "LoopbackLiveKit",
    "OfferedJob",
    "ReceivedMessage",
    "RejectedRequest",
    "WorkerConnection",
]
