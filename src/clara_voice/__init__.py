"""clara_voice: a LiveKit Agents worker that gives the Clara assistant a real-time voice.

The public names are imported when first used, not with the package: ``python -m
clara_voice --help`` (which imports the package first) then answers without loading
livekit-agents.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from clara_voice.agent.agent import CONNECT_FAILED_MESSAGE, ClaraVoiceAgent
    from clara_voice.agent.session import IllegalTransition, ParticipantSession
    from clara_voice.config import Settings, SettingsError, load_settings
    from clara_voice.persistence import Backend
    from clara_voice.states import ConnectionState
    from clara_voice.voice.seams import PipelineFactory, VoicePipeline

__version__ = "0.1.0"

_EXPORTS = {
    "CONNECT_FAILED_MESSAGE": "clara_voice.agent.agent",
    "ClaraVoiceAgent": "clara_voice.agent.agent",
    "IllegalTransition": "clara_voice.agent.session",
    "ParticipantSession": "clara_voice.agent.session",
    "Settings": "clara_voice.config",
    "SettingsError": "clara_voice.config",
    "load_settings": "clara_voice.config",
    "Backend": "clara_voice.persistence",
    "ConnectionState": "clara_voice.states",
    "PipelineFactory": "clara_voice.voice.seams",
    "VoicePipeline": "clara_voice.voice.seams",
}
"""Each public name and the module it comes from."""


def __getattr__(name: str) -> _typing.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clara_voice' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "CONNECT_FAILED_MESSAGE",
    "Backend",
    "ClaraVoiceAgent",
    "ConnectionState",
    "IllegalTransition",
    "ParticipantSession",
    "PipelineFactory",
    "Settings",
    "SettingsError",
    "VoicePipeline",
    "__version__",
    "load_settings",
]
