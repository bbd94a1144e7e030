"""ClaraAssistant: the livekit ``Agent`` each participant's pipeline runs.

It carries Clara's instructions (``CLARA_INSTRUCTIONS``) and the conversation so far; the
pipeline (pipeline.py) decides how audio and text reach it.
"""

from __future__ import annotations

from livekit.agents import Agent, llm


class ClaraAssistant(Agent):
    """Clara's conversational behaviour for one participant."""

    def __init__(self, *, instructions: str, chat_ctx: llm.ChatContext | None = None) -> None:
        super().__init__(instructions=instructions, chat_ctx=chat_ctx)
