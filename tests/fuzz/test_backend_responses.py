"""Fuzz: whatever a team's HTTP backend answers, and however it answers it.

A real :class:`HttpBackend` talks to a loopback server scripted per example: any status,
any body (bytes, JSON of any shape, the right shape with wrong fields, more than the
1 MiB bound), answered at once, never (a timeout), dripped slowly, or cut off halfway.
Every call returns what its contract says or raises a ``BackendError`` whose
``retryable`` follows the documented rule (docs/backend-api.md); nothing else escapes,
and memory stays flat.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from clara_voice.persistence.base import BackendError, OutboxRecord, StoredMessage
from clara_voice.persistence.http import MAX_RESPONSE_BYTES, HttpBackend
from tests.fuzz.conftest import Watch, budget, deeply_nested, texts

SURFACE = budget("backend")
TIMEOUT = 0.1
RETRYABLE = {401, 403, 404, 405, 408, 429}  # 404/405: a wrong CLARA_BACKEND_URL, fixable

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts(max_size=8), inner),
    max_leaves=8,
)
messages = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "assistant", "system", "tool"]),
                "text": texts(max_size=30),
                "at": st.just("2025-01-01T00:00:00Z"),
            }
        ),
        json_values,
    ),
    max_size=6,
)


def rarely(
    rare: st.SearchStrategy[Any], usual: st.SearchStrategy[Any], share: float
) -> st.SearchStrategy[Any]:
    """``rare`` in about ``share`` of the examples, ``usual`` in the others (hypothesis
    favours the small end of an integer range, so a plain ``integers(0, n) == 0`` is not)."""
    choices = [False] * (round(1 / share) - 1) + [True]
    return st.sampled_from(choices).flatmap(lambda pick: rare if pick else usual)


small_bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.builds(lambda m: json.dumps({"messages": m}).encode(), messages),
    st.builds(lambda c: json.dumps({"conversation_id": c}).encode(), json_values),
    st.just(b'{"conversation_id": "conv-1"}'),
    st.just(b'{"messages": ' + deeply_nested(100_000).encode() + b"}"),
)
huge_bodies = st.one_of(  # about the 1 MiB bound, either side
    st.builds(
        lambda n: b'{"messages": [' + b'{"role":"user","text":"x","at":"t"},' * n + b"{}]}",
        st.sampled_from([MAX_RESPONSE_BYTES // 35 - 10, MAX_RESPONSE_BYTES // 35 + 10]),
    ),
    st.integers(MAX_RESPONSE_BYTES - 1, MAX_RESPONSE_BYTES + 1).map(lambda n: b"x" * n),
)
bodies = rarely(huge_bodies, small_bodies, 1 / 20)
statuses = st.one_of(
    st.sampled_from([200, 201, 204, 302, 400, 401, 403, 404, 408, 409, 422, 429, 500, 503]),
    st.integers(200, 599),
)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    delay: float  # before the headers (more than TIMEOUT: no answer in time)
    drip: int  # pieces the body is sent in, a pause between each
    cut: bool  # the connection is cut after half the body


answers = st.builds(
    Answer,
    status=statuses,
    body=bodies,
    delay=rarely(st.just(2 * TIMEOUT), st.just(0.0), 1 / 50),
    drip=rarely(st.sampled_from([0, 2, 3]), st.just(1), 1 / 10),
    cut=rarely(st.just(True), st.just(False), 1 / 20),
)


class ScriptedBackend:
    """A loopback HTTP server answering each request with ``answer``."""

    def __init__(self) -> None:
        self.answer = Answer(200, b"{}", 0.0, 1, False)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/api"

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        answer = self.answer
        await request.read()
        if answer.delay:
            await asyncio.sleep(answer.delay)
        response = web.StreamResponse(status=answer.status)
        response.content_type = "application/json"
        if not answer.cut:
            response.content_length = len(answer.body)
        await response.prepare(request)
        body = answer.body[: len(answer.body) // 2] if answer.cut else answer.body
        size = max(1, -(-len(body) // max(answer.drip, 1)))
        for start in range(0, len(body), size):
            await response.write(body[start : start + size])
            if answer.drip > 1:
                await asyncio.sleep(TIMEOUT / 20)
        if answer.cut and request.transport is not None:
            request.transport.abort()
            return response
        await response.write_eof()
        return response


RECORD = OutboxRecord(key="turn:s1:0", kind="turn", payload={"text": "hello"})


async def outcome(called: Awaitable[Any]) -> tuple[Any, BackendError | None]:
    """What a call returned, or the BackendError it raised (anything else escapes)."""
    try:
        return await called, None
    except BackendError as error:
        return None, error


async def call(backend: HttpBackend, operation: str) -> Any:
    if operation == "joined":
        return await backend.agent_joined(room="room-1", conversation_id="conv-1")
    if operation == "history":
        return await backend.get_recent_messages("conv-1", 3, participant="ana")
    return await backend.deliver(RECORD)


def test_fuzz_backend_responses(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="aiohttp.server")  # the peer's own complaints
    with asyncio.Runner() as runner:
        server = ScriptedBackend()
        runner.run(server.start())
        backend = HttpBackend(server.url, token=SecretStr("fuzz-token"), timeout=TIMEOUT)
        watch = Watch(runner, SURFACE.max_examples)

        @SURFACE
        @given(answer=answers, operation=st.sampled_from(["joined", "history", "deliver"]))
        def example(answer: Answer, operation: str) -> None:
            server.answer = answer
            result, error = runner.run(outcome(call(backend, operation)))
            if error is not None:
                if error.status is not None:  # the backend answered, and refused
                    assert error.status == answer.status
                    assert error.retryable == (answer.status >= 500 or answer.status in RETRYABLE)
                assert "fuzz-token" not in str(error)
            else:
                assert 200 <= answer.status < 300 or answer.status in (404, 409)
                if operation == "joined":
                    assert isinstance(result, str) and result
                elif operation == "history":
                    assert isinstance(result, list) and len(result) <= 3
                    assert all(isinstance(m, StoredMessage) for m in result)
                    assert all(m.role in ("user", "assistant") for m in result)
                else:
                    assert result is None
            watch.example()
            watch.check()

        try:
            with watch:
                example()
                watch.check_memory()
        finally:
            runner.run(backend.aclose())
            runner.run(server.aclose())
