"""What a room job does for the fleet.

- The conversation outlives the job: a room whose metadata names no conversation gets the
  one this job started (``{"conversation_id": …}``, through the server API), so a job that
  replaces this one (a crash, a restart, another worker) continues the same conversation,
  each person's history loaded from the shared store. Metadata that is not a JSON object
  is left alone (the conversation then starts afresh in a new job).
- Its :class:`~clara_voice.fleet.presence.AgentPresence` beats and keeps one Clara per room,
  from the moment the job is in the room: on a busy machine an agent can take seconds to
  start, and watchers would take a Clara that never beat for a dead one.
"""

from __future__ import annotations

import asyncio
import json

from livekit import api
from livekit.agents import JobContext

from clara_voice._json import parse_json
from clara_voice.config import Settings
from clara_voice.fleet.presence import AgentPresence
from clara_voice.logging import ContextLogger, get_logger

API_TIMEOUT = 5.0


async def remember_conversation(ctx: JobContext, conversation_id: str) -> None:
    """Write ``conversation_id`` (the started agent's) into the room's metadata if it names
    none."""
    log = _log(ctx)
    raw = ctx.room.metadata
    try:
        data = parse_json(raw) if raw.strip() else {}
    except ValueError:
        return
    if not isinstance(data, dict) or data.get("conversation_id"):
        return
    metadata = json.dumps({**data, "conversation_id": conversation_id}, separators=(",", ":"))
    try:
        async with asyncio.timeout(API_TIMEOUT):
            await ctx.api.room.update_room_metadata(
                api.UpdateRoomMetadataRequest(room=ctx.room.name, metadata=metadata)
            )
    except Exception as exc:
        log.warning(
            "could not write the conversation into the room's metadata; a job replacing "
            "this one will start a new conversation",
            extra={"conversation_id": conversation_id, "error": str(exc)[:200]},
        )
        return
    log.info(
        "conversation written into the room's metadata",
        extra={"conversation_id": conversation_id},
    )


def _log(ctx: JobContext) -> ContextLogger:
    return get_logger("clara_voice.fleet", job_id=ctx.job.id, room=ctx.room.name)


def join_fleet(ctx: JobContext, settings: Settings) -> AgentPresence:
    """The job's presence in its room, started (call it once the room is connected; the
    caller closes it before the agent)."""

    async def remove(identity: str) -> None:
        async with asyncio.timeout(API_TIMEOUT):
            await ctx.api.room.remove_participant(
                api.RoomParticipantIdentity(room=ctx.room.name, identity=identity)
            )

    presence = AgentPresence(
        ctx.room,
        agent_name=settings.agent_name,
        dead_after=settings.agent_dead_after,
        leave=lambda reason: ctx.shutdown(reason=reason),
        remove=remove,
        log=_log(ctx),
    )
    presence.start()
    return presence


__all__ = ["join_fleet", "remember_conversation"]
