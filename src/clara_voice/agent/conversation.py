"""Conversation: what one room job knows and keeps of the room's conversation (seed 004).

Its context comes from the room's metadata at start and follows ``room_metadata_changed``;
it keeps the room's participants as the job saw them, and the conversation's last
``CLARA_HISTORY_MESSAGES`` messages: loaded from the backend at start (and again when the
room's metadata switches to another conversation), then followed as the sessions talk, so
a session that starts later (a participant who left and came back, a new one) continues
from what was said, this job included. Every message, participant event and session
summary goes to the recorder (the durable outbox) without waiting. The backend keeps the
history for good.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import replace
from datetime import UTC, datetime

from livekit import rtc
from livekit.agents.utils import aio

from clara_voice.agent.context import ParticipantState, RoomContext, parse_room_metadata
from clara_voice.agent.recorder import ConversationRecorder
from clara_voice.agent.session import ParticipantSession
from clara_voice.logging import ContextLogger
from clara_voice.persistence import StoredMessage
from clara_voice.voice.messages import HistoryMessage

MAX_PARTICIPANT_METADATA = 4096
MAX_DEPARTED = 64
"""Participants who left that the job still lists in session summaries (the latest ones):
a room with a stream of guests keeps a bounded list."""


class Conversation:
    """The room's conversation for one job: context, participants, earlier messages."""

    def __init__(
        self,
        room: rtc.Room,
        *,
        recorder: ConversationRecorder | None,
        log: ContextLogger,
        summary_messages: int = 20,
    ) -> None:
        self._room = room
        self._log = log
        self.recorder = recorder
        self._summary_messages = summary_messages
        self.context = RoomContext(conversation_id="")
        self.participants: dict[str, ParticipantState] = {}
        self._recent: deque[HistoryMessage] = deque()
        self._reload_atask: asyncio.Task[None] | None = None
        self._history = 0
        self._started = False

    @property
    def earlier_messages(self) -> list[HistoryMessage]:
        """The conversation's last messages, oldest first: what a new session continues from."""
        return list(self._recent)

    @property
    def conversation_id(self) -> str:
        if self.recorder is not None and self.recorder.conversation_id:
            return self.recorder.conversation_id
        return self.context.conversation_id

    async def start(self, *, history: int) -> None:
        """Read the room's context, open persistence, load the earlier messages."""
        self._started = True
        self._history = history
        self._recent = deque(maxlen=history)
        self.context = parse_room_metadata(self._room.metadata, self._log)
        self._room.on("room_metadata_changed", self._on_room_metadata_changed)
        if self.recorder is not None:
            stored = await self.recorder.start(
                room=self._room.name, context=self.context, history=history
            )
            self._recent.extend(_history(stored))
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
        if self._reload_atask is not None:
            await aio.cancel_and_wait(self._reload_atask)
        if self.recorder is not None:
            await self.recorder.aclose()

    def joined(self, participant: rtc.RemoteParticipant) -> None:
        state = ParticipantState(
            identity=participant.identity,
            joined_at=datetime.now(UTC),
            metadata=participant.metadata[:MAX_PARTICIPANT_METADATA],
        )
        self.participants.pop(participant.identity, None)  # a rejoin goes last
        self.participants[participant.identity] = state
        if self.recorder is not None:
            self.recorder.participant_event(state, "connected")

    def left(self, identity: str) -> None:
        if (state := self.participants.get(identity)) is None:
            return
        state.left_at = datetime.now(UTC)
        if self.recorder is not None:
            self.recorder.participant_event(state, "disconnected")
        departed = [key for key, kept in self.participants.items() if kept.left_at is not None]
        for key in departed[:-MAX_DEPARTED]:
            del self.participants[key]

    def message(self, session: ParticipantSession, message: HistoryMessage) -> None:
        """A user or assistant message of ``session``: kept, and recorded off the loop."""
        if self.recorder is not None:
            self.recorder.message(session, message)
        session.history.append(message)
        session.message_count += 1
        self._recent.append(message)

    def summary(self, session: ParticipantSession) -> None:
        """``session`` ended: its summary is recorded."""
        if self.recorder is not None:
            self.recorder.session_summary(
                session, list(self.participants.values()), last=self._summary_messages
            )

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
            self._recent.clear()  # another conversation: its own history, loaded now
            self._reload(context.conversation_id)
        elif not context.known:
            context = replace(context, conversation_id=self.conversation_id)
        self.context = context

    def _reload(self, conversation_id: str) -> None:
        if self.recorder is None or not self._started or self._history == 0:
            return
        if self._reload_atask is not None:
            self._reload_atask.cancel()
        self._reload_atask = asyncio.create_task(
            self._load(self.recorder, conversation_id), name="clara.conversation.reload"
        )

    async def _load(self, recorder: ConversationRecorder, conversation_id: str) -> None:
        stored = await recorder.recent_messages(conversation_id, self._history)
        if self.conversation_id == conversation_id:  # not switched again meanwhile
            # the loaded messages come before what was said since the switch; newest kept
            self._recent = deque([*_history(stored), *self._recent], maxlen=self._history)


def _history(stored: list[StoredMessage]) -> list[HistoryMessage]:
    return [HistoryMessage(role=m.role, text=m.text, at=_when(m.at)) for m in stored]


def _when(text: str) -> datetime:
    """A stored message's time (ISO 8601); now, when a backend sent something else."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return datetime.now(UTC)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


__all__ = ["MAX_DEPARTED", "MAX_PARTICIPANT_METADATA", "Conversation"]
