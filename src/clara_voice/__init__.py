"""clara_voice: a LiveKit Agents worker that gives the Clara assistant a real-time voice."""

from __future__ import annotations

from .agent import CONNECT_FAILED_MESSAGE, ClaraVoiceAgent
from .config import Settings, SettingsError, load_settings
from .persistence import Backend
from .pipeline import PipelineFactory, VoicePipeline
from .sessions import ConnectionState, IllegalTransition, ParticipantSession

__version__ = "0.1.0"

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
