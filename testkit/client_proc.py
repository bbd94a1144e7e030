"""A client participant in a process of its own, for the outage tests.

``python -m testkit.client_proc URL TOKEN ROOM IDENTITY`` joins the room as a
:class:`~testkit.human.Human` and then reads commands on stdin, one per line:

* ``say WAV`` — speak the WAV file into the microphone (answers ``said`` with the time
  the speech ended);
* ``state`` — answers ``state`` with what the client has received so far;
* ``leave`` — leaves on purpose and exits.

It writes one JSON object per line on stdout: ``joined``, the room's connection events
(``reconnecting``, ``reconnected``, ``disconnected``), and the answers above.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from livekit import rtc

from testkit.human import Human


class _GivenToken:
    """Stands in for the server: the URL and the token this process was given."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self._token = token

    def token(self, *_: Any, **__: Any) -> str:
        return self._token


def emit(kind: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": kind, **fields}) + "\n")
    sys.stdout.flush()


async def main(url: str, token: str, room: str, identity: str) -> None:
    human = Human(_GivenToken(url, token), room, identity)  # type: ignore[arg-type]
    human.room.on("reconnecting", lambda: emit("reconnecting"))
    human.room.on("reconnected", lambda: emit("reconnected"))
    human.room.on(
        "disconnected",
        lambda reason=None: emit("disconnected", reason=rtc.DisconnectReason.Name(reason or 0)),
    )
    await human.join()
    emit("joined")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async for raw in reader:
        command, _, argument = raw.decode().strip().partition(" ")
        if command == "say":
            utterance = human.say(Path(argument))
            await utterance.ended.wait()
            emit("said", ended_at=utterance.ended_at)
        elif command == "state":
            emit(
                "state",
                agent_transcripts=[t.text for t in human.agent_transcripts()],
                session=human.session_config(),
                sync=[e["payload"]["config"]["state"] for e in human.sync_events],
            )
        elif command == "leave":
            break
    await human.leave()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))


class ClientProcess:
    """The test's handle on a client process: its events, and commands to it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._changed = asyncio.Condition()
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(proc.stdout, self._on_line)),
            asyncio.create_task(self._read(proc.stderr, self.stderr.append)),
        ]

    @classmethod
    async def start(cls, argv: list[str], env: dict[str, str]) -> ClientProcess:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        return cls(proc)

    async def _read(self, stream: asyncio.StreamReader, sink: Any) -> None:
        async for raw in stream:
            sink(raw.decode(errors="replace").rstrip("\n"))
            async with self._changed:
                self._changed.notify_all()

    def _on_line(self, text: str) -> None:
        try:
            self.events.append(json.loads(text))
        except ValueError:
            self.stderr.append(text)

    async def wait_event(
        self, kind: str, *, since: int = 0, timeout: float = 20.0
    ) -> dict[str, Any]:
        """The first event ``kind`` at or after index ``since``."""

        def found() -> dict[str, Any] | None:
            return next((e for e in self.events[since:] if e.get("event") == kind), None)

        try:
            async with self._changed:
                event = await asyncio.wait_for(self._changed.wait_for(found), timeout)
        except TimeoutError:
            tail = "\n".join(self.stderr[-15:])
            raise AssertionError(f"the client sent no {kind!r} in {timeout}s\n{tail}") from None
        return event

    async def send(self, command: str) -> int:
        """Send a command; the index of the next event (to wait for its answer)."""
        assert self.proc.stdin is not None
        since = len(self.events)
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        return since

    async def state(self) -> dict[str, Any]:
        return await self.wait_event("state", since=await self.send("state"))

    async def close(self) -> None:
        if self.proc.returncode is None:
            try:
                await self.send("leave")
                await asyncio.wait_for(self.proc.wait(), 10)
            except (TimeoutError, ConnectionError):
                self.proc.kill()
                await self.proc.wait()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
