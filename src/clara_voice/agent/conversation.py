"""Conversation: what one room job knows and keeps of the room's conversation (seed 004).

Its context comes from the room's metadata at start and follows ``room_metadata_changed``;
it keeps the room's participants as the job saw them, and each participant's history.

History is per participant per conversation: several people may talk with Clara in one
room, each privately, so a session is only ever seeded with its own participant's earlier
messages (its words and Clara's answers to it), never anyone else's. A participant's
history is loaded from the backend when its first session of the job starts (the last
``CLARA_HISTORY_MESSAGES`` of that participant in the conversation), then followed as it
talks, so a later session of the same identity (a rejoin, a second device) continues from
what was said, this job included, before the outbox has delivered it. When the room's
metadata switches to another conversation, the histories kept are dropped and loaded
again from that conversation as sessions start. Every message, participant event and
session summary goes to the recorder (the durable outbox) without waiting. The backend
keeps the history for good.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

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
MAX_HISTORIES = 256
"""Participants whose history the job keeps in memory (the most recently used ones)."""


class Conversation:
    """The room's conversation for one job: context, participants, each one's history."""

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
        self._histories: OrderedDict[str, deque[HistoryMessage]] = OrderedDict()
        self._loads: dict[str, asyncio.Task[tuple[str, list[HistoryMessage]]]] = {}
        self._history = 0
        self._started = False

    @property
    def conversation_id(self) -> str:
        if self.recorder is not None and self.recorder.conversation_id:
            return self.recorder.conversation_id
        return self.context.conversation_id

    async def start(self, *, history: int) -> None:
        """Read the room's context and open persistence."""
        self._started = True
        self._history = history
        self.context = parse_room_metadata(self._room.metadata, self._log)
        self._room.on("room_metadata_changed", self._on_room_metadata_changed)
        if self.recorder is not None:
            await self.recorder.start(room=self._room.name, context=self.context)
        self._log.info(
            "conversation context",
            extra={"conversation_id": self.conversation_id, "user_id": self.context.user_id},
        )

    async def aclose(self) -> None:
        """Stop following the room and flush what is recorded; safe to call twice."""
        if self._started:
            self._started = False
            self._room.off("room_metadata_changed", self._on_room_metadata_changed)
        await aio.cancel_and_wait(*self._loads.values())
        self._loads.clear()
        if self.recorder is not None:
            await self.recorder.aclose()

    async def history_of(self, identity: str) -> list[HistoryMessage]:
        """``identity``'s earlier messages in this conversation, oldest first: what a new
        session of that participant continues from (its own, never another's)."""
        while self._history > 0:
            if (kept := self._histories.get(identity)) is not None:
                self._histories.move_to_end(identity)
                return list(kept)
            load = self._loads.get(identity)
            if load is None:
                load = self._loads[identity] = asyncio.create_task(
                    self._load(identity, self.conversation_id), name="clara.conversation.history"
                )
                load.add_done_callback(partial(self._load_done, identity))
            try:
                conversation_id, loaded = await asyncio.shield(load)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if load.cancelled() and not (current is not None and current.cancelling()):
                    continue  # the room switched conversations meanwhile: load that one's
                raise
            if conversation_id == self.conversation_id:
                return list(self._keep(identity, loaded))
        return []

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
        """A user or assistant message of ``session``: kept in its participant's history,
        and recorded off the loop."""
        if self.recorder is not None:
            self.recorder.message(session, message)
        session.history.append(message)
        session.message_count += 1
        if self._history > 0:
            self._keep(session.participant_id, []).append(message)

    def summary(self, session: ParticipantSession) -> None:
        """``session`` ended: its summary is recorded."""
        if self.recorder is not None:
            self.recorder.session_summary(
                session, list(self.participants.values()), last=self._summary_messages
            )

    def outbox_pending(self) -> int | None:
        """Undelivered outbox records (None without persistence)."""
        return None if self.recorder is None else self.recorder.outbox.pending_count()

    def _keep(self, identity: str, loaded: list[HistoryMessage]) -> deque[HistoryMessage]:
        """``identity``'s kept history (made from ``loaded`` when there is none yet), the
        most recently used last; the least recently used are forgotten past
        ``MAX_HISTORIES`` (a later session of theirs loads them from the store again)."""
        kept = self._histories.get(identity)
        if kept is None:
            kept = self._histories[identity] = deque(loaded, maxlen=self._history)
            while len(self._histories) > MAX_HISTORIES:
                self._histories.popitem(last=False)
        self._histories.move_to_end(identity)
        return kept

    async def _load(self, identity: str, conversation_id: str) -> tuple[str, list[HistoryMessage]]:
        if self.recorder is None or not self.context.known:
            return conversation_id, []  # a conversation the metadata did not name is new
        stored = await self.recorder.recent_messages(
            conversation_id, self._history, participant=identity
        )
        return conversation_id, _history(stored)

    def _load_done(self, identity: str, load: asyncio.Task[Any]) -> None:
        if self._loads.get(identity) is load:
            del self._loads[identity]

    def _on_room_metadata_changed(self, old: str, new: str) -> None:
        context = parse_room_metadata(new, self._log)
        if context.known and context.conversation_id != self.conversation_id:
            self._log.info(
                "room metadata names another conversation",
                extra={"from": self.conversation_id, "to": context.conversation_id},
            )
            if self.recorder is not None:
                self.recorder.conversation_id = context.conversation_id
            # another conversation: each participant's history of it is loaded when its
            # next session starts
            self._histories.clear()
            for load in self._loads.values():
                load.cancel()
            self._loads.clear()
        elif not context.known:
            context = replace(context, conversation_id=self.conversation_id)
        self.context = context


def _history(stored: list[StoredMessage]) -> list[HistoryMessage]:
    return [HistoryMessage(role=m.role, text=m.text, at=_when(m.at)) for m in stored]


def _when(text: str) -> datetime:
    """A stored message's time (ISO 8601); now, when a backend sent something else."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return datetime.now(UTC)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


__all__ = ["MAX_DEPARTED", "MAX_HISTORIES", "MAX_PARTICIPANT_METADATA", "Conversation"]
