"""The package's public names are exactly ``clara_voice.__all__`` (as httpx keeps its own)."""

from __future__ import annotations
import __future__

import types

import clara_voice

annotations = __future__.annotations


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name in dir(clara_voice)  # the names it imports when first used too
        if not name.startswith("_")
        and not isinstance(value := getattr(clara_voice, name), types.ModuleType)
        and value is not annotations
    }
    assert public | {"__version__"} == set(clara_voice.__all__)


def test_every_public_name_is_ours_and_documented() -> None:
    for name in clara_voice.__all__:
        value = getattr(clara_voice, name)
        if isinstance(value, (type, types.FunctionType)):
            assert value.__module__.startswith("clara_voice."), name
            assert value.__doc__, f"{name} has no docstring"


def test_no_livekit_public_name_is_reused() -> None:
    reserved = {"AgentSession", "Agent", "AgentServer", "JobContext", "RoomIO", "ChatMessage"}
    assert reserved.isdisjoint(clara_voice.__all__)
