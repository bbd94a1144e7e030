"""What a hostile participant costs the other person in its room: Alice's reply latency,
quiet and under a flood, in one run.

Method: everything runs on this machine, inside the private network namespace
(``scripts/private-net``): a real livekit-server, the loopback Deepgram and OpenAI peers
(they answer at once), and the real worker (``python -m clara_voice start``, default
settings but the loopback providers). Alice, a real rtc client, joins a room and asks
espeak-ng questions one after the other (each waits for Clara's spoken reply); her *reply
latency* is the end of her question as sent → the first agent audio frame heard through
the SFU (*heard*: it includes the clients' own load, as the flood's streams reach Alice's
client too), and livekit's own end-to-end figure of the turn in the worker's log (*agent*:
end of speech → first audio out, what clara controls). First ``--quiet`` turns alone in
the room; then testkit/hostile.py's participant floods the room for ``--flood`` seconds
(chat, byte streams on every topic, RPC calls, attribute changes, join/leave cycles of
fresh identities; ``--actions`` picks some) while Alice goes on asking.
Printed: p50, p95 and max of both phases, their ratio, the job's memory and open streams
from its health lines, and what the hostile participant sent and was refused. Bare
livekit is not a comparison here: its room input serves one participant per room, so the
flood's chat and streams would reach Alice's own session.

    scripts/private-net .venv/bin/python -m bench.hostile [--quiet 10] [--flood 60]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import secrets  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402

from testkit.hostile import ACTIONS, Hostile, alice_turn, reply, talk_through  # noqa: E402
from testkit.human import Human  # noqa: E402
from testkit.livekit_server import LiveKitServer  # noqa: E402
from testkit.loopback_providers import LoopbackDeepgram, LoopbackOpenAI  # noqa: E402
from testkit.worker import (  # noqa: E402
    STARTUP_TIMEOUT,
    LogLine,
    WorkerProcess,
    free_port,
    is_event,
    running_worker,
    worker_env,
)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "turns": len(values),
        "p50_ms": round(1000 * statistics.median(values)),
        "p95_ms": round(1000 * p95(values)),
        "max_ms": round(1000 * max(values)),
    }


def health(worker: WorkerProcess) -> LogLine | None:
    lines = worker.find(lambda line: str(line.get("event", "")).startswith("Health check"))
    return lines[-1] if lines else None


def agent_latencies(worker: WorkerProcess, since: int) -> list[float]:
    """The agent's own figure of each of Alice's turns since log line ``since``: livekit's
    end-to-end latency (end of speech → first audio out), free of the clients' load."""
    lines = worker.find(
        lambda line: line.get("event") == "turn completed" and line.get("participant") == "alice",
        since,
    )
    return [float(line["e2e_latency"]) for line in lines if line.get("e2e_latency") is not None]


async def run(
    quiet_turns: int, flood_seconds: float, work: Path, actions: frozenset[str]
) -> dict[str, object]:
    (work / "livekit").mkdir()
    server = LiveKitServer(work / "livekit")
    server.start()
    try:
        async with LoopbackOpenAI(replies=reply) as openai, LoopbackDeepgram() as deepgram:
            deepgram.transcripts = [f"alice question {n}" for n in range(1000)]
            env = worker_env(
                url=server.url,
                api_key=server.api_key,
                api_secret=server.api_secret,
                http_port=free_port(),
                CLARA_DATA_DIR=str(work / "data"),
                CLARA_HEALTH_CHECK_INTERVAL="5",
                CLARA_STT_BASE_URL=deepgram.base_url,
                CLARA_LLM_BASE_URL=openai.base_url,
                CLARA_TTS_BASE_URL=openai.base_url,
            )
            async with running_worker(env, work) as worker:
                await worker.wait_line(
                    is_event("registered worker"), "registered", timeout=STARTUP_TIMEOUT
                )
                room = f"hostile-{secrets.token_hex(3)}"
                alice = Human(server, room, "alice")
                await alice.join()
                start = len(worker.lines)
                quiet = [await alice_turn(alice, n) for n in range(quiet_turns)]
                agent_quiet = agent_latencies(worker, start)
                flood_start = len(worker.lines)
                before = health(worker)
                hostile = Hostile(server, room, duration=flood_seconds, actions=actions)
                during, tally = await talk_through(alice, hostile, quiet_turns)
                agent_flood = agent_latencies(worker, flood_start)
                await asyncio.sleep(12)  # two health rounds after the flood
                after = health(worker)
                await alice.leave()
    finally:
        server.stop()
    q, f = summary(quiet), summary(during)
    aq, af = summary(agent_quiet), summary(agent_flood)
    figures = ("memory_mb", "open_streams", "ffi_subscriptions", "tasks", "sessions")
    return {
        "actions": sorted(actions),
        "heard_quiet": q,
        "heard_flood": f,
        "heard_p95_ratio": round(f["p95_ms"] / q["p95_ms"], 3),
        "agent_quiet": aq,
        "agent_flood": af,
        "agent_p95_ratio": round(af["p95_ms"] / aq["p95_ms"], 3),
        "job_before": {k: (before or {}).get(k) for k in figures},
        "job_after": {k: (after or {}).get(k) for k in figures},
        "hostile": dict(tally),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiet", type=int, default=10, help="turns before the flood")
    parser.add_argument("--flood", type=float, default=60.0, help="seconds of flood")
    parser.add_argument(
        "--actions", default=",".join(sorted(ACTIONS)), help="what the flood sends (comma list)"
    )
    args = parser.parse_args()
    actions = frozenset(filter(None, args.actions.split(",")))
    print(json.dumps({"method": __doc__.split("\n\n")[1].replace("\n", " ")}))
    with tempfile.TemporaryDirectory(prefix="clara-hostile-") as work:
        result = asyncio.run(run(args.quiet, args.flood, Path(work), actions))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
