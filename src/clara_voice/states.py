"""The words every wing shares about a participant's session: its type (seed 003) and its
connection state (seed 001).

A session's *type* fixes how its turns are taken: ``text`` (chat messages), ``voice-ptt``
(the client's push-to-talk RPCs) or ``voice-vad`` (the server hears the end of speech). Its
*connection state* moves ``connecting → connected → reconnecting → connected | closed``,
and ``error``; :mod:`clara_voice.agent.session` holds the table of legal moves.
"""

from __future__ import annotations

from typing import Literal, get_args

SessionType = Literal["text", "voice-ptt", "voice-vad"]
SESSION_TYPES: tuple[SessionType, ...] = get_args(SessionType)

SESSION_TYPE_ATTRIBUTE = "clara.session_type"
"""The participant attribute (set in its token, or later) naming the type it asks for."""

ConnectionState = Literal["connecting", "connected", "reconnecting", "error", "closed"]

__all__ = ["SESSION_TYPES", "SESSION_TYPE_ATTRIBUTE", "ConnectionState", "SessionType"]
