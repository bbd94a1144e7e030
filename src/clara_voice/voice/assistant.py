"""ClaraAssistant: the livekit ``Agent`` each participant's pipeline runs.

It carries Clara's instructions (``CLARA_INSTRUCTIONS``) and the conversation so far; the
pipeline (pipeline.py) decides how audio and text reach it. With the `combined` turn
detection it also lends the turn detector an ear: each microphone frame on its way to the
STT is handed to ``hear`` (voice/listening.py), so the detector judges the same audio the
words came from.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from livekit import rtc
from livekit.agents import Agent, ModelSettings, llm


class ClaraAssistant(Agent):
    """Clara's conversational behaviour for one participant."""

    def __init__(
        self,
        *,
        instructions: str,
        chat_ctx: llm.ChatContext | None = None,
        hear: Callable[[rtc.AudioFrame], None] | None = None,
    ) -> None:
        super().__init__(instructions=instructions, chat_ctx=chat_ctx)
        self._hear = hear

    def stt_node(self, audio: AsyncIterable[rtc.AudioFrame], model_settings: ModelSettings) -> Any:
        if self._hear is None:
            return Agent.default.stt_node(self, audio, model_settings)
        return Agent.default.stt_node(self, _tee(audio, self._hear), model_settings)


async def _tee(
    audio: AsyncIterable[rtc.AudioFrame], hear: Callable[[rtc.AudioFrame], None]
) -> AsyncIterator[rtc.AudioFrame]:
    async for frame in audio:
        hear(frame)
        yield frame
