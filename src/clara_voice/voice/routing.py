"""The room's chat and push-to-talk, routed to each sender's own pipeline.

livekit's room input serves one participant per room (its chat handler and RPC methods are
registered once per room), so with several participants only the first would be heard.
clara_voice registers once per room instead and dispatches by the sender's identity:

- :class:`ChatRouter`: text streams on ``lk.chat``, each message a turn of its sender's
  session (at most ``MAX_CHAT_TEXT`` characters);
- :class:`PushToTalk`: the RPC methods ``clara.start_turn``, ``clara.end_turn`` and
  ``clara.cancel_turn``, each acting on its *caller's* session only, so nobody can start or
  end another participant's turn.

Both log with the room's logger and name the participant in each line.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

from livekit import rtc
from livekit.agents.types import TOPIC_CHAT
from livekit.agents.utils import aio

from clara_voice._ratelimit import RateLimits
from clara_voice.logging import ContextLogger
from clara_voice.voice.notices import Notices, RefusalLog
from clara_voice.voice.streams import StreamDispatch, StreamTooLarge

if TYPE_CHECKING:
    from livekit.agents import AgentSession

RPC_START_TURN = "clara.start_turn"
RPC_END_TURN = "clara.end_turn"
RPC_CANCEL_TURN = "clara.cancel_turn"
PTT_METHODS = (RPC_START_TURN, RPC_END_TURN, RPC_CANCEL_TURN)
MAX_CHAT_TEXT = 8_000  # characters in one chat message
CHAT_BURST, CHAT_PER_SECOND = 5.0, 0.5
"""Chat messages per sender: 5 at once, then one every 2 s (each costs an LLM and a TTS call)."""
PTT_BURST, PTT_PER_SECOND = 10.0, 2.0
"""Push-to-talk calls per caller: 10 at once, then 2 a second (a turn takes two)."""
CHAT_RATE_MESSAGE = "Too many messages; wait a moment before sending more."
CHAT_TOO_LONG_MESSAGE = f"That message is too long (the limit is {MAX_CHAT_TEXT} characters)."


class PushToTalk:
    """Routes the room's push-to-talk RPC calls to the caller's own AgentSession.

    The methods are registered with the room's first pipeline (whatever its type) and stay
    until :meth:`close`, so a caller never gets "method not supported": a participant
    without a push-to-talk session (yet) gets a coded ``no_session`` refusal.
    """

    def __init__(self, local_participant: Any, refusals: RefusalLog) -> None:
        self._local = local_participant
        self._refusals = refusals
        self._sessions: dict[str, AgentSession[Any]] = {}
        self._limits = RateLimits(capacity=PTT_BURST, rate=PTT_PER_SECOND)
        self._registered = False
        self.calls: dict[str, int] = {}

    def register(self) -> None:
        """Answer the push-to-talk methods from now on; safe to call twice."""
        if not self._registered:
            for method in PTT_METHODS:
                self._local.register_rpc_method(method, partial(self._handle, method))
            self._registered = True

    def add(self, identity: str, agent_session: AgentSession[Any]) -> None:
        """Start routing ``identity``'s calls to ``agent_session``."""
        self.register()
        self._sessions[identity] = agent_session
        agent_session.input.set_audio_enabled(False)  # nothing is heard until start_turn

    def serves(self, identity: str, agent_session: AgentSession[Any]) -> bool:
        """Whether ``identity``'s calls are routed to ``agent_session``."""
        return self._sessions.get(identity) is agent_session

    def remove(self, identity: str, agent_session: AgentSession[Any]) -> None:
        if self._sessions.get(identity) is agent_session:
            del self._sessions[identity]

    def close(self) -> None:
        """Unregister the RPC methods; safe to call twice."""
        self._sessions.clear()
        if self._registered:
            self._registered = False
            for method in PTT_METHODS:
                self._local.unregister_rpc_method(method)

    async def _handle(self, method: str, data: rtc.RpcInvocationData) -> str:
        agent_session = self._sessions.get(data.caller_identity)
        if agent_session is None:
            raise _refusal("no_session", "no push-to-talk session for this participant")
        if not self._limits.admit(data.caller_identity):
            self._refusals.refused(
                "push-to-talk call refused: too many",
                participant=data.caller_identity,
                method=method[:64],
            )
            raise _refusal("rate_limited", "too many push-to-talk calls, try again in a moment")
        self.calls[method] = self.calls.get(method, 0) + 1
        if method == RPC_START_TURN:
            try:
                agent_session.interrupt()
            except RuntimeError:
                # the reply being spoken disallows interruptions (CLARA_ALLOW_INTERRUPTIONS
                # off, or the apology): the turn cannot start over it
                raise _refusal("not_interruptible", NOT_INTERRUPTIBLE_MESSAGE) from None
            agent_session.clear_user_turn()
            agent_session.input.set_audio_enabled(True)
        elif method == RPC_END_TURN:
            agent_session.input.set_audio_enabled(False)
            agent_session.commit_user_turn()
        else:
            agent_session.input.set_audio_enabled(False)
            agent_session.clear_user_turn()
        return json.dumps({"ok": True, "method": method})


NOT_INTERRUPTIBLE_MESSAGE = (
    "Clara can't be interrupted right now; start your turn when she has finished speaking"
)


def _refusal(code: str, message: str) -> rtc.RpcError:
    """A push-to-talk refusal: ``message`` for a person, ``data`` coded JSON as the sync
    protocol's errors are."""
    data = json.dumps({"v": 1, "error": code, "message": message}, separators=(",", ":"))
    return rtc.RpcError(rtc.RpcError.ErrorCode.APPLICATION_ERROR, message, data)


TextHandler = Callable[[str], Coroutine[Any, Any, None]]


class ChatRouter:
    """Routes the room's chat text streams (topic ``lk.chat``) to the sender's pipeline.

    livekit's room input registers one chat handler per room, so with several participants
    only the first one's text would be heard; here each sender's handler is registered
    with the room's :class:`~clara_voice.voice.streams.StreamDispatch` instead (which closes
    the streams of senders without a session). A message is read only up to
    ``MAX_CHAT_TEXT`` characters, and each sender has a rate limit; a refused message is
    closed unread and answered with a ``clara.notice`` to its sender (see
    docs/client-protocol.md).
    """

    def __init__(self, streams: StreamDispatch, notices: Notices, log: ContextLogger) -> None:
        self._streams = streams
        self._notices = notices
        self._log = log
        self._handlers: dict[str, TextHandler] = {}
        self._limits = RateLimits(capacity=CHAT_BURST, rate=CHAT_PER_SECOND)
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, identity: str, handler: TextHandler) -> None:
        if identity in self._handlers:
            self._streams.remove("text", TOPIC_CHAT, identity)
        self._handlers[identity] = handler
        # the chat's own budget answers a flood with notices: no second one in the dispatch
        self._streams.add(
            "text",
            TOPIC_CHAT,
            identity,
            self._on_stream,
            max_bytes=MAX_CHAT_TEXT * 4,
            rate_limited=False,
        )

    def remove(self, identity: str, handler: TextHandler) -> None:
        if self._handlers.get(identity) == handler:
            del self._handlers[identity]
            self._streams.remove("text", TOPIC_CHAT, identity)

    async def aclose(self) -> None:
        """Stop routing and reading; safe to call twice."""
        for identity in list(self._handlers):
            self._streams.remove("text", TOPIC_CHAT, identity)
        self._handlers.clear()
        await aio.cancel_and_wait(*self._tasks)

    def _on_stream(self, reader: rtc.TextStreamReader, participant_identity: str) -> None:
        handler = self._handlers.get(participant_identity)
        if handler is None:  # removed meanwhile
            reader.close()
            return
        if not self._limits.admit(participant_identity):
            reader.close()
            self._refuse(participant_identity, "rate_limited", CHAT_RATE_MESSAGE)
            return
        task = asyncio.create_task(self._read(reader, handler, participant_identity))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, reader: rtc.TextStreamReader, handler: TextHandler, who: str) -> None:
        try:
            text = await read_bounded(reader, MAX_CHAT_TEXT)
            if text is None:
                self._refuse(who, "too_long", CHAT_TOO_LONG_MESSAGE)
                return
            if text.strip():
                await handler(text)
        except StreamTooLarge:
            self._refuse(who, "too_long", CHAT_TOO_LONG_MESSAGE)
        except rtc.StreamError as exc:  # the sender aborted it, or left
            self._log.info(
                "chat text ended early", extra={"participant": who[:128], "error": str(exc)[:200]}
            )
        except Exception as exc:
            self._log.warning(
                "failed to handle chat text", extra={"participant": who[:128]}, exc_info=exc
            )
        finally:
            reader.close()

    def _refuse(self, who: str, code: str, message: str) -> None:
        self._notices.refusals.refused("chat text refused", participant=who, error=code)
        self._notices.refuse(who, input=TOPIC_CHAT, error=code, message=message)


async def read_bounded(reader: rtc.TextStreamReader, limit: int) -> str | None:
    """The stream's text, or ``None`` as soon as it is known to be over ``limit``
    characters (the rest is not read: the caller closes the reader)."""
    declared = reader.info.size
    if declared is not None and declared > limit * 4:  # the size is in bytes; UTF-8 ≤ 4 each
        return None
    chunks: list[str] = []
    length = 0
    async for chunk in reader:
        length += len(chunk)
        if length > limit:
            return None
        chunks.append(chunk)
    return "".join(chunks)
