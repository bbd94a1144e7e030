"""AgentStates: each conversation's state, as agent attributes.

livekit's RoomIO writes the one ``lk.agent.state`` attribute for its AgentSession; with a
session per participant, each writes its own state here instead: the participant's own
attribute ``clara.agent_state.<identity>``, and ``lk.agent.state`` shows the room's one
conversation (with several, the busiest: speaking, thinking, listening, initializing,
idle). A conversation that ends removes its attribute. The writing is the room's one
:class:`~clara_voice.voice.attributes.AgentAttributes`.
"""

from __future__ import annotations

from livekit.agents.types import ATTRIBUTE_AGENT_STATE

from clara_voice.voice.attributes import AgentAttributes

AGENT_STATE_PREFIX = "clara.agent_state."
_STATE_ORDER = ("speaking", "thinking", "listening", "initializing", "idle")


def agent_state_attribute(identity: str) -> str:
    """The agent attribute holding the state of ``identity``'s conversation."""
    return AGENT_STATE_PREFIX + identity


def busiest_state(states: list[str]) -> str | None:
    """The state ``lk.agent.state`` shows for the room's conversations."""
    if not states:
        return None
    return min(states, key=lambda s: _STATE_ORDER.index(s) if s in _STATE_ORDER else 99)


class AgentStates:
    """The state of each conversation of the room, written as attributes."""

    def __init__(self, attributes: AgentAttributes) -> None:
        self._attributes = attributes
        self._states: dict[str, str] = {}

    def set(self, identity: str, state: str | None) -> None:
        """``identity``'s conversation is now in ``state`` (None: it ended)."""
        if state is None:
            if self._states.pop(identity, None) is None:
                return
            self._attributes.set(agent_state_attribute(identity), "")
        else:
            self._states[identity] = state
            self._attributes.set(agent_state_attribute(identity), state)
        busiest = busiest_state(list(self._states.values()))
        if busiest is not None:  # the last conversation's state stays, as livekit's does
            self._attributes.set(ATTRIBUTE_AGENT_STATE, busiest)


__all__ = ["AGENT_STATE_PREFIX", "AgentStates", "agent_state_attribute", "busiest_state"]
