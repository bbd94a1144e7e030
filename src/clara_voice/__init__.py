"""clara_voice: a LiveKit Agents worker that gives the Clara assistant a real-time voice."""

from __future__ import annotations

from clara_voice.agent.agent import CONNECT_FAILED_MESSAGE, ClaraVoiceAgent
from clara_voice.agent.session import IllegalTransition, ParticipantSession
from clara_voice.config import Settings, SettingsError, load_settings
from clara_voice.persistence import Backend
from clara_voice.states import ConnectionState
from clara_voice.voice.seams import PipelineFactory, VoicePipeline

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
