"""Requests to change a session's type (seed 003).

A participant asks through its ``clara.session_type`` attribute or the
``clara.set_session_type`` RPC. :class:`ChangeRequests` answers both: it admits the request
(a token bucket per participant), checks its size and parses it, and finds the caller's own
session (a participant may change only its own); then it asks a :class:`TypeSwitch` (the
sync service) to switch the session, or to keep the type for when a (re)connecting session
is active. A refusal is counted in ``rejected`` and logged; an RPC caller also gets it back
as an ``RpcError`` carrying the error's JSON.

The payloads and error codes are in :mod:`clara_voice.sync.protocol`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

from livekit import rtc

from clara_voice._ratelimit import RateLimits
from clara_voice.states import SESSION_TYPE_ATTRIBUTE, SessionType
from clara_voice.sync.protocol import (
    RequestError,
    SessionConfig,
    check_size,
    encode,
    parse_session_type,
    parse_type_request,
)
from clara_voice.sync.seams import SyncedSession, SyncSessions
from clara_voice.voice.notices import RefusalLog


class TypeSwitch(Protocol):
    """Applies an admitted request (``SessionSync``)."""

    def switch(self, session: SyncedSession, requested: SessionType, source: str) -> SessionConfig:
        """Switch now; the new config, or :class:`RequestError`."""
        ...

    def defer(self, session: SyncedSession, requested: SessionType) -> None:
        """Switch once the (re)connecting session is active."""
        ...


class ChangeRequests:
    """Answers the type change requests of one room's participants."""

    def __init__(
        self,
        sessions: SyncSessions,
        switch: TypeSwitch,
        *,
        refusals: RefusalLog,
        rejected: Counter[str],
        rate_capacity: float = 5.0,
        rate_per_second: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._switch = switch
        self._refusals = refusals
        self._rejected = rejected
        self._limits = RateLimits(capacity=rate_capacity, rate=rate_per_second, clock=clock)

    def clear(self) -> None:
        """Drop every rate limit."""
        self._limits.clear()

    def on_attributes_changed(
        self, changed: Mapping[str, str], participant: rtc.Participant
    ) -> None:
        """The room's ``participant_attributes_changed``: a request through the attribute."""
        if SESSION_TYPE_ATTRIBUTE not in changed:
            return
        session = self._sessions.of(participant.identity)
        if session is None or not isinstance(participant, rtc.RemoteParticipant):
            return  # the agent itself, or a participant without a session
        value = changed[SESSION_TYPE_ATTRIBUTE]
        if not value:
            return  # the attribute was removed: the session keeps its type
        try:
            self._admit(participant.identity)
            check_size(value)
            requested = parse_session_type(value)
            if session.connection_state in ("connecting", "reconnecting"):
                self._switch.defer(session, requested)
            else:
                self._switch.switch(session, requested, "attribute")
        except RequestError as error:
            self.refuse(error, participant.identity, "attribute")

    async def on_rpc(self, data: rtc.RpcInvocationData) -> str:
        """The ``clara.set_session_type`` RPC: the new config, or an ``RpcError``."""
        caller = data.caller_identity
        try:
            self._admit(caller)
            request = parse_type_request(data.payload)
            session = self._sessions.of(caller)
            if session is None:
                raise RequestError("no_session", "the caller has no session with this agent")
            if request.session_id is not None and request.session_id != session.session_id:
                raise RequestError("not_authorized", "a participant may change only its session")
            config = self._switch.switch(session, request.type, "rpc")
        except RequestError as error:
            self.refuse(error, caller, "rpc")
            raise rtc.RpcError(
                rtc.RpcError.ErrorCode.APPLICATION_ERROR, error.message, error.to_json()
            ) from None
        return encode(
            {"v": 1, "ok": True, "session_id": session.session_id, "config": config.to_json()}
        )

    def refuse(self, error: RequestError, identity: str, source: str) -> None:
        """Count and log a refused request (the log rate-limited across the room)."""
        self._rejected[error.code] += 1
        self._refusals.refused(
            "session change refused", participant=identity, via=source, error=error.code
        )

    def _admit(self, identity: str) -> None:
        if not self._limits.admit(identity):
            raise RequestError("rate_limited", "too many session changes, try again later")


__all__ = ["ChangeRequests", "TypeSwitch"]
