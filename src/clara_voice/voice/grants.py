"""TrackGrants: who may subscribe to which of the agent's tracks (enforced by the SFU).

Each conversation's agent audio track may be subscribed to by its owner only. From the
first track the agent publishes, its subscription permissions say exactly that (LiveKit's
``set_track_subscription_permissions``: nobody else's subscription is ever accepted); each
track is granted to its owner as it is published and revoked when it is unpublished. A full
reconnect re-issues the agent's track sids, and the grants move along.
"""

from __future__ import annotations

from livekit import rtc


class TrackGrants:
    """The agent's track subscription permissions in one room."""

    def __init__(self, room: rtc.Room) -> None:
        self._room = room
        self._grants: dict[str, set[str]] = {}
        self._restricted = False
        self._following = False

    def start(self) -> None:
        """Follow the agent's republished tracks; idempotent."""
        if not self._following:
            self._following = True
            self._room.on("local_track_republished", self._on_republished)

    def close(self) -> None:
        """Stop following the room; safe to call twice."""
        if self._following:
            self._following = False
            self._room.off("local_track_republished", self._on_republished)

    def restrict(self) -> None:
        """From now on only granted participants may subscribe to the agent's tracks."""
        if not self._restricted:
            self._restricted = True
            self._apply()

    def grant(self, identity: str, track_sid: str) -> None:
        self._grants.setdefault(identity, set()).add(track_sid)
        self._apply()

    def revoke(self, identity: str, track_sid: str) -> None:
        sids = self._grants.get(identity)
        if sids is None or track_sid not in sids:
            return
        sids.discard(track_sid)
        if not sids:
            del self._grants[identity]
        self._apply()

    def _apply(self) -> None:
        if not self._room.isconnected():
            return  # re-applied on republish; permissions need a connected participant
        self._room.local_participant.set_track_subscription_permissions(
            allow_all_participants=False,
            participant_permissions=[
                rtc.ParticipantTrackPermission(
                    participant_identity=identity, allowed_track_sids=sorted(sids)
                )
                for identity, sids in sorted(self._grants.items())
            ],
        )

    def _on_republished(self, publication: rtc.LocalTrackPublication, previous_sid: str) -> None:
        for sids in self._grants.values():
            if previous_sid in sids:
                sids.discard(previous_sid)
                sids.add(publication.sid)
        if self._restricted:
            self._apply()


__all__ = ["TrackGrants"]
