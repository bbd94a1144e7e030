"""ConversationRecorder: the agent's one door to persistence.

Writes (turns, participant events, session summaries) become :class:`OutboxRecord`s put
into the durable outbox without waiting: the agent's room handlers and the audio path never
await the disk or the network. Reads are bounded by ``START_TIMEOUT``: the conversation id
once at job start, and a participant's last messages of a known conversation when its
first session of the job starts; when one fails the job goes on with what it has and says
so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clara_voice.logging import ContextLogger
from clara_voice.persistence.base import (
    Backend,
    OutboxError,
    OutboxRecord,
    RecordKind,
    StoredMessage,
)
from clara_voice.persistence.outbox import Outbox

if TYPE_CHECKING:
    from clara_voice.agent.context import ParticipantState, RoomContext
    from clara_voice.agent.session import ParticipantSession
    from clara_voice.config import Settings
    from clara_voice.voice.messages import HistoryMessage

START_TIMEOUT = 5.0
"""Bound on each read at job start (agent joined, recent messages)."""


class ConversationRecorder:
    """Puts a room's conversation records into the outbox and reads its history."""

    def __init__(
        self,
        backend: Backend,
        *,
        directory: Path,
        log: ContextLogger,
        flush_timeout: float,
        retry_max: float,
        on_error: Callable[[], None],
        max_attempts: int = 10,
        max_age: float | None = 900.0,
        max_bytes: int = 256 << 20,
        max_dead_letters: int = 10_000,
    ) -> None:
        self._backend = backend
        self._outbox = Outbox(
            directory,
            backend,
            flush_timeout=flush_timeout,
            retry_max=retry_max,
            max_attempts=max_attempts,
            max_age=max_age,
            max_bytes=max_bytes,
            max_dead_letters=max_dead_letters,
        )
        self._log = log
        self._on_error = on_error
        self._room = ""
        self.conversation_id = ""
        self._started = False
        self._closed = False

    @classmethod
    def from_settings(
        cls,
        backend: Backend,
        settings: Settings,
        *,
        log: ContextLogger,
        on_error: Callable[[], None],
    ) -> ConversationRecorder:
        """A recorder with the outbox ``settings`` ask for, under ``CLARA_DATA_DIR``."""
        return cls(
            backend,
            directory=settings.data_dir,
            log=log,
            flush_timeout=settings.outbox_flush_timeout,
            retry_max=settings.outbox_retry_max,
            max_attempts=settings.outbox_max_attempts,
            max_age=settings.outbox_max_age,
            max_bytes=settings.outbox_max_bytes,
            max_dead_letters=settings.outbox_max_dead_letters,
            on_error=on_error,
        )

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    async def start(self, *, room: str, context: RoomContext) -> None:
        """Open the outbox and tell the backend the agent joined."""
        self._started = True
        self._room = room
        self.conversation_id = context.conversation_id
        await self._outbox.start()
        try:
            async with asyncio.timeout(START_TIMEOUT):
                self.conversation_id = await self._backend.agent_joined(
                    room=room, conversation_id=context.conversation_id
                )
        except Exception as exc:
            self._on_error()
            self._log.warning(
                "backend did not confirm the conversation, going on with the room's id",
                extra={"conversation_id": self.conversation_id, "error": _short(exc)},
            )

    async def recent_messages(
        self, conversation_id: str, limit: int, *, participant: str
    ) -> list[StoredMessage]:
        """``participant``'s last ``limit`` messages of the conversation from the backend
        (bounded by ``START_TIMEOUT``); none, with a warning, when the backend fails."""
        try:
            async with asyncio.timeout(START_TIMEOUT):
                earlier = await self._backend.get_recent_messages(
                    conversation_id, limit, participant=participant
                )
        except Exception as exc:
            self._on_error()
            self._log.warning(
                "could not load the participant's earlier messages, starting without them",
                extra={
                    "conversation_id": conversation_id,
                    "participant": participant,
                    "error": _short(exc),
                },
            )
            return []
        # a backend that ignores the participant must not leak another's words
        earlier = [m for m in earlier if m.participant == participant]
        self._log.info(
            "conversation continued",
            extra={
                "conversation_id": conversation_id,
                "participant": participant,
                "earlier_messages": len(earlier),
            },
        )
        return earlier[-limit:]

    def participant_event(self, state: ParticipantState, event: str) -> None:
        at = state.left_at if event == "disconnected" and state.left_at else state.joined_at
        self._put(
            "participant",
            f"participant:{self.conversation_id}:{state.identity}:{event}:{at.isoformat()}",
            {
                "participant": state.identity,
                "event": event,
                "at": at.isoformat(),
                "metadata": state.metadata,
            },
        )

    def message(self, session: ParticipantSession, message: HistoryMessage) -> None:
        seq = len(session.history)
        self._put(
            "turn",
            f"turn:{session.session_id}:{seq}",
            {
                "session_id": session.session_id,
                "participant": session.participant_id,
                "seq": seq,
                **message.as_record(),
            },
        )

    def session_summary(
        self, session: ParticipantSession, participants: list[ParticipantState], *, last: int
    ) -> None:
        """The session's summary: counts, participants, times, the range of its turns (each
        is a record of its own) and its last ``last`` messages, so it stays small however
        long the session was."""
        ended = datetime.now(UTC)
        count = len(session.history)
        self._put(
            "session",
            f"session:{session.session_id}",
            {
                "session_id": session.session_id,
                "participant": session.participant_id,
                "message_count": session.message_count,
                "participants": [p.as_record() for p in participants],
                "messages": [m.as_record() for m in session.history[-last:]] if last else [],
                "first_seq": 0 if count else None,
                "last_seq": count - 1 if count else None,
                "started_at": session.start_time.isoformat(),
                "ended_at": ended.isoformat(),
                "duration_s": round((ended - session.start_time).total_seconds(), 3),
            },
        )

    async def aclose(self) -> None:
        """Flush the outbox (bounded), then close the backend; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._started:
                await self._outbox.aclose()
        finally:
            await self._backend.aclose()

    def _put(self, kind: RecordKind, key: str, payload: dict[str, Any]) -> None:
        if self._closed or not self._started:
            self._log.error("record dropped: persistence is closed", extra={"key": key})
            self._on_error()
            return
        payload = {"conversation_id": self.conversation_id, "room": self._room, **payload}
        future = self._outbox.put_nowait(OutboxRecord(key=key, kind=kind, payload=payload))
        future.add_done_callback(lambda f: self._check_put(f, key))

    def _check_put(self, future: asyncio.Future[None], key: str) -> None:
        if future.cancelled() or (exc := future.exception()) is None:
            return
        self._on_error()
        if isinstance(exc, OutboxError):  # closed or full: said by the outbox, no traceback
            self._log.error(
                "could not write a record to the outbox", extra={"key": key, "error": _short(exc)}
            )
            return
        self._log.error("could not write a record to the outbox", extra={"key": key}, exc_info=exc)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
