"""Participant tokens: what a client (the smoke-test CLI, the web page) joins a room with.

A token lets one identity join one room, publish its microphone and data, and subscribe;
it can carry the session type the participant asks for as its ``clara.session_type``
attribute, which the agent reads when the participant joins.
"""

from __future__ import annotations

from datetime import timedelta

from livekit import api

from clara_voice.states import SESSION_TYPE_ATTRIBUTE, SessionType


def mint_token(
    *,
    api_key: str,
    api_secret: str,
    room: str,
    identity: str,
    session_type: SessionType | None = None,
    ttl: timedelta = timedelta(hours=1),
) -> str:
    """A participant token for ``room``, asking for ``session_type`` if given."""
    token = (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_name(identity)
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .with_ttl(ttl)
    )
    if session_type is not None:
        token = token.with_attributes({SESSION_TYPE_ATTRIBUTE: session_type})
    return token.to_jwt()


__all__ = ["mint_token"]
