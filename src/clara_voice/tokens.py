"""Participant tokens: what a client (the smoke-test CLI, the web page) joins a room with.

A token lets one identity join one room with only what a person talking to Clara needs:
publish its microphone (no camera, no screen) and data, subscribe; no room admin, no
recording, no changing its own name, metadata or attributes. It can carry the session type
the participant asks for as its ``clara.session_type`` attribute, which the agent reads
when the participant joins, a display name, and the agent to dispatch to the room
(``CLARA_AGENT_NAME``: workers register with it, and LiveKit dispatches them explicitly).
"""

from __future__ import annotations

from datetime import timedelta

from livekit import api

from clara_voice.states import SESSION_TYPE_ATTRIBUTE, SessionType

PUBLISH_SOURCES = ["microphone"]
"""The only track source a participant's token lets it publish."""


def participant_grants(room: str) -> api.VideoGrants:
    """What a person talking to Clara may do in ``room``, and nothing more."""
    return api.VideoGrants(
        room_join=True,
        room=room,
        can_publish=True,
        can_publish_sources=list(PUBLISH_SOURCES),
        can_publish_data=True,
        can_subscribe=True,
        can_update_own_metadata=False,
        room_admin=False,
        room_record=False,
        room_create=False,
        room_list=False,
        hidden=False,
        agent=False,
    )


def mint_token(
    *,
    api_key: str,
    api_secret: str,
    room: str,
    identity: str,
    name: str | None = None,
    session_type: SessionType | None = None,
    agent_name: str = "",
    ttl: timedelta = timedelta(hours=1),
) -> str:
    """A participant token for ``identity`` in ``room`` (shown as ``name``), asking for
    ``session_type`` if given, and for the agent ``agent_name`` (LiveKit's explicit
    dispatch: the room this token creates gets that agent) if given."""
    token = (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_name(name or identity)
        .with_grants(participant_grants(room))
        .with_ttl(ttl)
    )
    if session_type is not None:
        token = token.with_attributes({SESSION_TYPE_ATTRIBUTE: session_type})
    if agent_name:
        token = token.with_room_config(dispatch_of(agent_name))
    return token.to_jwt()


def dispatch_of(agent_name: str) -> api.RoomConfiguration:
    """The room configuration that dispatches the agent ``agent_name`` to the room."""
    return api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=agent_name)])


__all__ = ["PUBLISH_SOURCES", "dispatch_of", "mint_token", "participant_grants"]
