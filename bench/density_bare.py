"""The bare livekit-agents worker bench/density.py compares clara_voice with.

``python -m bench.density_bare start``: an ``AgentServer`` whose room job is the minimal
voice agent of livekit's examples: ``ctx.connect()``, then
``AgentSession(stt, llm, tts, vad)`` started with a one-line ``Agent``, and nothing else.
The providers are the ones clara_voice builds by default (Deepgram ``nova-3``, OpenAI
``gpt-4.1-mini``, ``gpt-4o-mini-tts`` voice ``ash`` asked for ``pcm``), pointed at the
bench's loopback peers; the VAD is livekit's bundled silero (``inference.VAD()``, its
default options) loaded in the prewarm function, as livekit's examples do. Everything
else — turn detection (the bundled end-of-turn model), endpointing, interruptions — is
livekit's default.

Set by the bench through the environment (never by the user):

* ``BENCH_STT_URL``, ``BENCH_OPENAI_URL``: the loopback peers;
* ``BENCH_HTTP_PORT``: the worker's health port;
* ``BENCH_LOAD_THRESHOLD``: ``load_threshold`` (livekit's default when unset);
* ``BENCH_NUM_IDLE_PROCESSES``: ``num_idle_processes`` (livekit's default when unset);
* ``BENCH_JOB_EXECUTOR``: ``process`` or ``thread`` (livekit's default when unset);
* ``BENCH_PREWARM``: ``0`` builds the VAD in the job instead of the prewarm function;
* ``BENCH_REPORT_LOAD``: ``0`` reports a load of 0 to the server (see
  bench/density_clara.py);
* ``BENCH_TURN_DETECTION``: ``vad`` ends turns on the VAD's silence alone instead of
  livekit's default end-of-turn model (whose inference clara_voice's default turn
  detection does without too).
"""

from __future__ import annotations

import os
from typing import Any

from livekit.agents import (
    Agent,
    AgentServer,
    AgentSession,
    JobContext,
    JobExecutorType,
    JobProcess,
    cli,
    inference,
)
from livekit.plugins import deepgram, openai

VAD_KEY = "vad"


def prewarm(proc: JobProcess) -> None:
    proc.userdata[VAD_KEY] = inference.VAD()


async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    the_vad = ctx.proc.userdata.get(VAD_KEY) or inference.VAD()
    openai_url = os.environ["BENCH_OPENAI_URL"]
    options: dict[str, Any] = {}
    if os.environ.get("BENCH_TURN_DETECTION") == "vad":
        options["turn_handling"] = {"turn_detection": "vad"}
    session: AgentSession[Any] = AgentSession(
        stt=deepgram.STT(
            model="nova-3",
            language="en",
            base_url=os.environ["BENCH_STT_URL"],
            api_key="bench-deepgram-key",
        ),
        llm=openai.LLM(model="gpt-4.1-mini", base_url=openai_url, api_key="bench-openai-key"),
        tts=openai.TTS(
            model="gpt-4o-mini-tts",
            voice="ash",
            response_format="pcm",
            base_url=openai_url,
            api_key="bench-openai-key",
        ),
        vad=the_vad,
        **options,
    )
    await session.start(
        agent=Agent(instructions="You are a helpful voice assistant."), room=ctx.room
    )


def no_load() -> float:
    return 0.0


def server_from_env() -> AgentServer:
    options: dict[str, Any] = {}
    if threshold := os.environ.get("BENCH_LOAD_THRESHOLD"):
        options["load_threshold"] = float(threshold)
    if idle := os.environ.get("BENCH_NUM_IDLE_PROCESSES"):
        options["num_idle_processes"] = int(idle)
    if executor := os.environ.get("BENCH_JOB_EXECUTOR"):
        options["job_executor_type"] = JobExecutorType(executor)
    if os.environ.get("BENCH_REPORT_LOAD") == "0":
        options["load_fnc"] = no_load
    if os.environ.get("BENCH_PREWARM", "1") != "0":
        options["setup_fnc"] = prewarm
    server = AgentServer(host="127.0.0.1", port=int(os.environ["BENCH_HTTP_PORT"]), **options)
    server.rtc_session(entrypoint)
    return server


def main() -> None:
    cli.run_app(server_from_env())


if __name__ == "__main__":
    # through the module's own name, so the job processes find ``entrypoint`` and
    # ``prewarm`` as ``bench.density_bare.*`` rather than in ``__main__``
    from bench.density_bare import main as run

    run()
