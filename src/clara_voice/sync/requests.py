"""Change requests of a session's type (seed 003): admitted, checked, applied or refused.

A participant asks to change its own session's type through the ``clara.session_type``
attribute or the ``clara.set_session_type`` RPC. :class:`ChangeRequests` handles both for
one :class:`~clara_voice.sync.SessionSync`, which owns it, registers its handlers on the
room and keeps the per-session records it reads and writes. A request is rate-limited per
participant, authorized (a participant may change only its own session), parsed, and applied
by calling the session's ``pipeline.set_session_type``; SessionSync then publishes the new
config. A refusal is counted in ``SessionSync.rejected`` and logged; an RPC caller also gets
it back as an ``RpcError`` carrying the error's JSON. An attribute request that arrives
while the session is still (re)connecting waits in the record's ``pending_type``, which
SessionSync applies when the session becomes active.

The payloads and error codes are in :mod:`clara_voice._sync_protocol`.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from livekit import rtc

from clara_voice.agent.session import ParticipantSession
from clara_voice.config import SessionType
from clara_voice.logging import ContextLogger
from clara_voice.sync.protocol import (
    RequestError,
    SessionConfig,
    TokenBucket,
    check_size,
    encode,
    parse_session_type,
    parse_type_request,
)
from clara_voice.voice.turns import SESSION_TYPE_ATTRIBUTE

if TYPE_CHECKING:
    from clara_voice.sync.service import SyncHost, _Record

MAX_BUCKETS = 1024


class ChangeRequests:
    """The type change requests of one SessionSync's sessions."""

    def __init__(
        self,
        *,
        host: SyncHost,
        log: ContextLogger,
        rejected: Counter[str],
        record: Callable[[ParticipantSession], _Record],
        record_of: Callable[[str], _Record | None],
        type_changed: Callable[[ParticipantSession, _Record, str], None],
        rate_capacity: float,
        rate_per_second: float,
        clock: Callable[[], float],
    ) -> None:
        self._host = host
        self._log = log
        self._rejected = rejected
        self._record = record
        self._record_of = record_of
        self._type_changed = type_changed
        self._rate = (rate_capacity, rate_per_second)
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def forget(self, identity: str) -> None:
        """Drop ``identity``'s rate limit (its session ended)."""
        self._buckets.pop(identity, None)

    def clear(self) -> None:
        """Drop every rate limit (SessionSync closed)."""
        self._buckets.clear()

    def on_attributes_changed(
        self, changed: Mapping[str, str], participant: rtc.Participant
    ) -> None:
        """The room's ``participant_attributes_changed``: a request through the attribute."""
        if SESSION_TYPE_ATTRIBUTE not in changed:
            return
        session = self._host.session_of(participant.identity)
        if session is None or not isinstance(participant, rtc.RemoteParticipant):
            return  # the agent itself, or a participant without a session
        value = changed[SESSION_TYPE_ATTRIBUTE]
        if not value:
            return  # the attribute was removed: the session keeps its type
        try:
            self._admit(participant.identity)
            check_size(value)
            requested = parse_session_type(value)
        except RequestError as error:
            self._refuse(error, participant.identity, "attribute")
            return
        record = self._record_of(session.session_id)
        if session.connection_state != "connected" or session.pipeline is None:
            if record is not None and session.connection_state in ("connecting", "reconnecting"):
                record.pending_type = requested
            return
        self.apply_quietly(session, requested, "attribute")

    async def on_rpc(self, data: rtc.RpcInvocationData) -> str:
        """The ``clara.set_session_type`` RPC: the new config, or an ``RpcError``."""
        caller = data.caller_identity
        try:
            self._admit(caller)
            request = parse_type_request(data.payload)
            session = self._host.session_of(caller)
            if session is None:
                raise RequestError("no_session", "the caller has no session with this agent")
            if request.session_id is not None and request.session_id != session.session_id:
                raise RequestError("not_authorized", "a participant may change only its session")
            config = self._apply(session, request.type, "rpc")
        except RequestError as error:
            self._refuse(error, caller, "rpc")
            raise rtc.RpcError(
                rtc.RpcError.ErrorCode.APPLICATION_ERROR, error.message, error.to_json()
            ) from None
        return encode(
            {"v": 1, "ok": True, "session_id": session.session_id, "config": config.to_json()}
        )

    def apply_quietly(
        self, session: ParticipantSession, requested: SessionType, source: str
    ) -> None:
        """Switch ``session`` to ``requested``; a refusal is counted and logged only."""
        try:
            self._apply(session, requested, source)
        except RequestError as error:
            self._refuse(error, session.participant_id, source)

    def _admit(self, identity: str) -> None:
        bucket = self._buckets.get(identity)
        if bucket is None:
            capacity, rate = self._rate
            bucket = self._buckets[identity] = TokenBucket(
                capacity=capacity, rate=rate, clock=self._clock
            )
            while len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        if not bucket.take():
            raise RequestError("rate_limited", "too many session changes, try again later")

    def _refuse(self, error: RequestError, identity: str, source: str) -> None:
        self._rejected[error.code] += 1
        self._log.warning(
            "session change refused",
            extra={"participant": identity[:128], "via": source, "error": error.code},
        )

    def _apply(
        self, session: ParticipantSession, requested: SessionType, source: str
    ) -> SessionConfig:
        """Switch ``session`` to ``requested`` (synchronous: the pipeline's switch is)."""
        record = self._record(session)
        if session.connection_state != "connected" or session.pipeline is None:
            raise RequestError("session_not_active", "the session is not active")
        if session.session_type == requested and record.config.type == requested:
            return record.config
        previous = session.session_type
        try:
            # the pipeline updates session.session_type itself (a no-op for the current one)
            session.pipeline.set_session_type(requested)
        except Exception as exc:
            self._host.count_error("session")
            session.log.error(
                "failed to change the session type",
                extra={"to": requested, "from": previous},
                exc_info=exc,
            )
            raise RequestError(
                "reconfigure_failed",
                f"the session could not switch to {requested}; it keeps its type",
            ) from None
        session.session_type = requested
        record.config.retype(requested)
        session.log.info(
            "session type changed", extra={"from": previous, "to": requested, "via": source}
        )
        self._type_changed(session, record, source)
        return record.config
