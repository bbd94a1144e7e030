"""Conversation: what one room job knows and keeps of the room's conversation (seed 004).

Its context comes from the room's metadata at start and follows ``room_metadata_changed``;
it keeps the room's participants as the job saw them, loads the last messages of a known
conversation so that a new session continues from them, and hands every message, every
participant event and every session's summary to the recorder (the durable outbox),
without waiting. History lives in memory for the job; the backend keeps it for good.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from livekit import rtc

from clara_voice.agent.context import ParticipantState, RoomContext, parse_room_metadata
from clara_voice.agent.recorder import ConversationRecorder
from clara_voice.agent.session import ParticipantSession
from clara_voice.logging import ContextLogger
from clara_voice.voice.messages import HistoryMessage

MAX_PARTICIPANT_METADATA = 4096


class Conversation:
    """The room's conversation for one job: context, participants, earlier messages."""

    def __init__(
        self, room: rtc.Room, *, recorder: ConversationRecorder | None, log: ContextLogger
    ) -> None:
        self._room = room
        self._log = log
        self.recorder = recorder
        self.context = RoomContext(conversation_id="")
        self.participants: dict[str, ParticipantState] = {}
        self.earlier_messages: list[HistoryMessage] = []
        """The known conversation's last messages, loaded at start."""
        self._started = False

    @property
    def conversation_id(self) -> str:
        if self.recorder is not None and self.recorder.conversation_id:
            return self.recorder.conversation_id
        return self.context.conversation_id

    async def start(self, *, history: int) -> None:
        """Read the room's context, open persistence, load the earlier messages."""
        self._started = True
        self.context = parse_room_metadata(self._room.metadata, self._log)
        self._room.on("room_metadata_changed", self._on_room_metadata_changed)
        if self.recorder is not None:
            stored = await self.recorder.start(
                room=self._room.name, context=self.context, history=history
            )
            self.earlier_messages = [
                HistoryMessage(role=m.role, text=m.text, at=_when(m.at)) for m in stored
            ]
        self._log.info(
            "conversation context",
            extra={
                "conversation_id": self.conversation_id,
                "user_id": self.context.user_id,
                "earlier_messages": len(self.earlier_messages),
            },
        )

    async def aclose(self) -> None:
        """Stop following the room and flush what is recorded; safe to call twice."""
        if self._started:
            self._started = False
            self._room.off("room_metadata_changed", self._on_room_metadata_changed)
        if self.recorder is not None:
            await self.recorder.aclose()

    def joined(self, participant: rtc.RemoteParticipant) -> None:
        state = ParticipantState(
            identity=participant.identity,
            joined_at=datetime.now(UTC),
            metadata=participant.metadata[:MAX_PARTICIPANT_METADATA],
        )
        self.participants[participant.identity] = state
        if self.recorder is not None:
            self.recorder.participant_event(state, "connected")

    def left(self, identity: str) -> None:
        if (state := self.participants.get(identity)) is None:
            return
        state.left_at = datetime.now(UTC)
        if self.recorder is not None:
            self.recorder.participant_event(state, "disconnected")

    def message(self, session: ParticipantSession, message: HistoryMessage) -> None:
        """A user or assistant message of ``session``: kept, and recorded off the loop."""
        if self.recorder is not None:
            self.recorder.message(session, message)
        session.history.append(message)
        session.message_count += 1

    def summary(self, session: ParticipantSession) -> None:
        """``session`` ended: its summary is recorded."""
        if self.recorder is not None:
            self.recorder.session_summary(session, list(self.participants.values()))

    def outbox_pending(self) -> int | None:
        """Undelivered outbox records (None without persistence)."""
        return None if self.recorder is None else self.recorder.outbox.pending_count()

    def _on_room_metadata_changed(self, old: str, new: str) -> None:
        context = parse_room_metadata(new, self._log)
        if context.known and context.conversation_id != self.conversation_id:
            self._log.info(
                "room metadata names another conversation",
                extra={"from": self.conversation_id, "to": context.conversation_id},
            )
            if self.recorder is not None:
                self.recorder.conversation_id = context.conversation_id
        elif not context.known:
            context = replace(context, conversation_id=self.conversation_id)
        self.context = context


def _when(text: str) -> datetime:
    """A stored message's time (ISO 8601); now, when a backend sent something else."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return datetime.now(UTC)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


__all__ = ["MAX_PARTICIPANT_METADATA", "Conversation"]
