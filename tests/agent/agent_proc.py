"""A job process whose agent is mid-conversation when it is killed (test_crash_recovery).

``python -m tests.agent_proc <data dir>`` runs a real ClaraVoiceAgent on a fake room with
its persistence pointed at a backend that is down, lets two participants talk (the
messages the pipeline would report), and prints each turn's key once the outbox has
acknowledged it (committed it to disk). It talks until it is killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from clara_voice.agent.agent import ClaraVoiceAgent
from clara_voice.config import load_settings
from clara_voice.voice.messages import HistoryMessage
from testkit.fakes import FakePipelineFactory, FakeRoom, make_participant, report
from tests.persistence.outbox_writer_proc import DownBackend

CONVERSATION = "conv-crash"


async def main(data: Path) -> None:
    settings = load_settings(data_dir=data, outbox_retry_max=0.2)
    room = FakeRoom("crash-room", metadata=f'{{"conversation_id": "{CONVERSATION}"}}')
    agent = ClaraVoiceAgent(room, settings, pipeline=FakePipelineFactory(), backend=DownBackend())
    await agent.start()
    recorder = agent.conversation.recorder
    assert recorder is not None
    sessions = []
    for identity in ("alice", "bob"):
        participant = make_participant(identity)
        room.remote_participants[identity] = participant  # as the SDK has it at join
        sessions.append(await agent.on_participant_joined(participant))
    expected = 2  # the two participant events
    n = 0
    while True:
        for session in sessions:
            assert session is not None
            seq = len(session.history)
            role = "user" if seq % 2 == 0 else "assistant"
            report(session, HistoryMessage(role=role, text=f"{session.participant_id} {n}"))
            expected += 1
            # acknowledged = committed; the outbox has no per-commit event, so poll
            while recorder.outbox.pending_count() < expected:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            sys.stdout.write(f"turn:{session.session_id}:{seq}\n")
            sys.stdout.flush()
        n += 1


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
