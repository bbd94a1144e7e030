"""HttpBackend against the loopback reference backend: requests, replies, error mapping,
idempotency, secrecy of the token and lifecycle (seed 004, docs/backend-api.md)."""

from __future__ import annotations

import asyncio
import gc
import logging
import traceback
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

import clara_voice
from clara_voice.persistence.base import BackendError, OutboxRecord, RecordKind, StoredMessage
from clara_voice.persistence.http import MAX_RESPONSE_BYTES, RECORD_PATHS, HttpBackend
from testkit.loopback_backend import LoopbackBackend
from tests.persistence.records import participant_event, session_summary

TOKEN = "tok-5f1d9c0e-very-secret"


@pytest.fixture
async def server() -> AsyncIterator[LoopbackBackend]:
    async with LoopbackBackend(token=TOKEN) as server:
        yield server


@pytest.fixture
async def backend(server: LoopbackBackend) -> AsyncIterator[HttpBackend]:
    async with HttpBackend(server.base_url, token=SecretStr(TOKEN), timeout=2.0) as backend:
        yield backend


def turn(seq: int, *, role: str = "user", text: str = "hello", session: str = "s1") -> OutboxRecord:
    return OutboxRecord(
        key=f"turn:{session}:{seq}",
        kind="turn",
        payload={
            "conversation_id": "c1",
            "room": "room-1",
            "session_id": session,
            "participant": "alice",
            "seq": seq,
            "role": role,
            "text": text,
            "at": f"2025-01-01T00:00:{seq:02d}Z",
            "metrics": {"llm_ttft": 0.25},
        },
    )


RECORDS: dict[RecordKind, OutboxRecord] = {
    "turn": turn(1),
    "participant": participant_event(),
    "session": session_summary(),
}


async def failure(call: Awaitable[object]) -> BackendError:
    """The BackendError the awaitable ``call`` raises."""
    with pytest.raises(BackendError) as caught:
        await call
    return caught.value


# -- requests and replies ---------------------------------------------------------------------


async def test_agent_joined_posts_room_and_conversation(
    server: LoopbackBackend, backend: HttpBackend
) -> None:
    assert await backend.agent_joined(room="room-1", conversation_id="c1") == "c1"

    [request] = server.requests
    assert (request.method, request.path, request.status) == ("POST", "/agents/joined", 200)
    assert request.json == {"room": "room-1", "conversation_id": "c1"}
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["User-Agent"] == f"clara-voice/{clara_voice.__version__}"
    assert request.headers["Content-Type"] == "application/json"
    assert "Idempotency-Key" not in request.headers


async def test_agent_joined_returns_the_backends_own_conversation_id(
    server: LoopbackBackend, backend: HttpBackend
) -> None:
    conversation_id = await backend.agent_joined(room="room-1", conversation_id="")

    assert conversation_id.startswith("conv-")
    assert server.joined == [{"room": "room-1", "conversation_id": conversation_id}]


async def test_recent_messages_are_the_last_n_oldest_first(
    server: LoopbackBackend, backend: HttpBackend
) -> None:
    server.conversations["c1"] = [
        {
            "role": "user" if i % 2 else "assistant",
            "text": f"m{i}",
            "at": f"t{i}",
            "participant": "ana",
        }
        for i in range(5)
    ]

    messages = await backend.get_recent_messages("c1", 3, participant="ana")

    assert messages == [
        StoredMessage(role="assistant", text="m2", at="t2", participant="ana"),
        StoredMessage(role="user", text="m3", at="t3", participant="ana"),
        StoredMessage(role="assistant", text="m4", at="t4", participant="ana"),
    ]
    [request] = server.requests
    assert (request.method, request.path, request.query) == (
        "GET",
        "/conversations/c1/messages",
        {"participant": "ana", "limit": "3"},
    )
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.body == b""


async def test_unknown_conversation_has_no_messages(
    server: LoopbackBackend, backend: HttpBackend
) -> None:
    assert await backend.get_recent_messages("nobody-knows", 10, participant="ana") == []
    assert server.requests[0].status == 404


async def test_conversation_id_is_one_escaped_path_segment(
    server: LoopbackBackend, backend: HttpBackend
) -> None:
    odd = "team/a b?c#d%"
    server.conversations[odd] = [{"role": "user", "text": "hi", "at": "t", "participant": "ana"}]

    assert await backend.get_recent_messages(odd, 5, participant="ana") == [
        StoredMessage(role="user", text="hi", at="t", participant="ana")
    ]
    assert server.requests[0].segments == ["conversations", odd, "messages"]


async def test_no_request_for_an_empty_conversation_id_or_limit(
    server: LoopbackBackend, backend: HttpBackend
) -> None:
    assert await backend.get_recent_messages("", 10, participant="ana") == []
    assert await backend.get_recent_messages("c1", 0, participant="ana") == []
    assert await backend.get_recent_messages("c1", 5, participant="") == []
    assert server.requests == []


async def test_messages_with_unknown_roles_are_skipped(
    server: LoopbackBackend, backend: HttpBackend, caplog: pytest.LogCaptureFixture
) -> None:
    server.conversations["c1"] = [
        {"role": "system", "text": "be brief", "at": "t0", "participant": "ana"},
        {"role": "user", "text": "hi", "at": "t1", "participant": "ana"},
    ]

    with caplog.at_level(logging.WARNING, logger="clara_voice"):
        messages = await backend.get_recent_messages("c1", 10, participant="ana")

    assert messages == [StoredMessage(role="user", text="hi", at="t1", participant="ana")]
    [record] = caplog.records
    assert record.getMessage() == "backend messages with unknown roles skipped"
    assert record.skipped == 1  # type: ignore[attr-defined]


async def test_more_messages_than_asked_keeps_the_newest(
    server: LoopbackBackend, backend: HttpBackend
) -> None:
    server.answer(
        200,
        '{"messages": [{"role": "user", "text": "a", "at": "1", "participant": "ana"},'
        ' {"role": "assistant", "text": "b", "at": "2", "participant": "ana"}]}',
    )

    assert await backend.get_recent_messages("c1", 1, participant="ana") == [
        StoredMessage(role="assistant", text="b", at="2", participant="ana")
    ]


async def test_a_backend_answering_other_participants_messages_never_leaks_them(
    server: LoopbackBackend, backend: HttpBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression (issue 16, critical 1): history is per participant. A backend that
    ignores the ``participant`` query and answers the whole conversation (or messages that
    name nobody) must not put another person's words in this one's history."""
    server.answer(
        200,
        '{"messages": [{"role": "user", "text": "my pin is 4711", "at": "1", "participant": "bo"},'
        ' {"role": "user", "text": "no owner", "at": "2"},'
        ' {"role": "user", "text": "mine", "at": "3", "participant": "ana"}]}',
    )

    with caplog.at_level(logging.WARNING, logger="clara_voice"):
        messages = await backend.get_recent_messages("c1", 10, participant="ana")

    assert [m.text for m in messages] == ["mine"]
    [record] = caplog.records
    assert record.dropped == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["turn", "participant", "session"])
async def test_deliver_posts_payload_and_key_with_idempotency_key(
    server: LoopbackBackend, backend: HttpBackend, kind: RecordKind
) -> None:
    record = RECORDS[kind]

    await backend.deliver(record)

    [request] = server.requests
    assert (request.method, request.path, request.status) == ("POST", RECORD_PATHS[kind], 201)
    assert request.json == {**record.payload, "key": record.key}
    assert request.headers["Idempotency-Key"] == record.key
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert [r.key for r in server.records()] == [record.key]


async def test_duplicate_delivery_is_success_and_stored_once(
    server: LoopbackBackend, backend: HttpBackend
) -> None:
    await backend.deliver(turn(1))
    await backend.deliver(turn(1))

    assert [r.status for r in server.requests] == [201, 409]
    assert len(server.records("turns")) == 1


async def test_delivered_turns_continue_the_conversation(
    server: LoopbackBackend, backend: HttpBackend
) -> None:
    conversation_id = await backend.agent_joined(room="room-1", conversation_id="c1")
    await backend.deliver(turn(1, role="user", text="what time is it"))
    await backend.deliver(turn(2, role="assistant", text="noon"))

    participant = turn(1).payload["participant"]
    assert await backend.get_recent_messages(conversation_id, 10, participant=participant) == [
        StoredMessage(
            role="user", text="what time is it", at="2025-01-01T00:00:01Z", participant=participant
        ),
        StoredMessage(
            role="assistant", text="noon", at="2025-01-01T00:00:02Z", participant=participant
        ),
    ]
    assert await backend.get_recent_messages(conversation_id, 10, participant="someone-else") == []


async def test_base_path_is_kept(server: LoopbackBackend) -> None:
    async with (
        LoopbackBackend(prefix="/api/v1") as prefixed,
        HttpBackend(prefixed.base_url + "/", token=None) as backend,
    ):
        await backend.deliver(turn(1))
        assert prefixed.requests[0].path == "/turns"
        assert prefixed.requests[0].status == 201
        assert "Authorization" not in prefixed.requests[0].headers


async def test_concurrent_first_calls_share_one_session(server: LoopbackBackend) -> None:
    backend = HttpBackend(server.base_url, token=SecretStr(TOKEN))  # started by its first call
    try:
        await asyncio.gather(*(backend.deliver(turn(seq)) for seq in range(20)))
    finally:
        await backend.aclose()
    assert len(server.records("turns")) == 20
    gc.collect()  # a second, unclosed session would warn (an error under filterwarnings)


# -- error mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["status_500", "status_429", "drop"])
async def test_transient_failures_are_retryable(
    server: LoopbackBackend, backend: HttpBackend, mode: Any
) -> None:
    server.fail(mode)

    error = await failure(backend.deliver(turn(1)))

    assert error.retryable
    assert server.records() == []
    await backend.deliver(turn(1))  # the retry goes through once the backend recovers
    assert len(server.records()) == 1


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (500, True),
        (502, True),
        (503, True),
        (408, True),
        (429, True),
        (400, False),
        (401, True),  # credentials an operator fixes: the record waits in the outbox
        (403, True),
        (404, True),  # a wrong CLARA_BACKEND_URL, which an operator fixes
        (405, True),
        (413, False),
        (422, False),
        (302, False),
    ],
)
async def test_status_mapping(
    server: LoopbackBackend, backend: HttpBackend, status: int, retryable: bool
) -> None:
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: backend.deliver(turn(1)),
        lambda: backend.agent_joined(room="room-1", conversation_id="c1"),
    ]
    if status != 404:  # an unknown conversation, for messages
        calls.append(lambda: backend.get_recent_messages("c1", 5, participant="ana"))
    server.answer(status, "the backend says no", count=len(calls))

    for call in calls:
        error = await failure(call())
        assert error.retryable is retryable
        assert f"HTTP {status}" in str(error)


async def test_400_is_not_retryable_and_says_why(
    server: LoopbackBackend, backend: HttpBackend
) -> None:
    server.fail("status_400", body='{"error": "text must not be empty"}\n' + "x" * 1000)

    error = await failure(backend.deliver(turn(1)))

    assert not error.retryable
    message = str(error)
    assert message.startswith("POST /turns: HTTP 400 Bad Request: ")
    assert '{"error": "text must not be empty"}' in message
    assert len(message) < 300


async def test_record_refused_by_the_reference_backend_is_not_retryable(
    server: LoopbackBackend, backend: HttpBackend
) -> None:
    bad = OutboxRecord(key="turn:s1:9", kind="turn", payload={"room": "room-1"})

    error = await failure(backend.deliver(bad))

    assert not error.retryable
    assert "conversation_id must be a str" in str(error)


async def test_missing_token_is_refused_and_the_record_waits(server: LoopbackBackend) -> None:
    async with HttpBackend(server.base_url, token=None) as backend:
        error = await failure(backend.deliver(turn(1)))
    assert error.retryable
    assert "HTTP 401" in str(error)
    assert "Authorization" not in server.requests[0].headers


async def test_timeout_is_retryable_and_the_retry_is_deduplicated(
    server: LoopbackBackend,
) -> None:
    async with HttpBackend(server.base_url, token=SecretStr(TOKEN), timeout=0.2) as backend:
        server.fail("slow", seconds=0.6)

        error = await failure(backend.deliver(turn(1)))
        assert error.retryable
        assert "no answer within 0.2 s" in str(error)

        # the slow backend stored it after the worker gave up: the retry is a duplicate
        await server.wait_for(lambda: server.records())
        await backend.deliver(turn(1))

    assert [r.status for r in server.requests] == [201, 409]
    assert len(server.records()) == 1


async def test_refused_while_down_then_delivered_on_the_same_port(
    server: LoopbackBackend, backend: HttpBackend
) -> None:
    await backend.deliver(turn(1))  # a pooled connection the outage will cut
    port = server.port
    server.fail("down")

    assert (await failure(backend.deliver(turn(2)))).retryable
    async with HttpBackend(server.base_url, token=SecretStr(TOKEN)) as fresh:
        error = await failure(fresh.deliver(turn(2)))
    assert error.retryable
    assert "ClientConnectorError" in str(error)

    await server.up()
    assert server.port == port
    await backend.deliver(turn(2))
    assert [r.key for r in server.records()] == ["turn:s1:1", "turn:s1:2"]


async def test_going_down_mid_request_is_retryable(
    server: LoopbackBackend, backend: HttpBackend
) -> None:
    server.fail("slow", seconds=30)
    delivery = asyncio.create_task(backend.deliver(turn(1)))
    await server.wait_for(lambda: server.requests)

    server.fail("down")

    assert (await failure(asyncio.wait_for(delivery, 5))).retryable
    await server.up()
    assert server.records() == []


async def test_dropped_reads_are_retryable(server: LoopbackBackend, backend: HttpBackend) -> None:
    # aiohttp retries an idempotent GET once on a cut connection, so cut it twice
    server.fail("drop", count=2)

    assert (await failure(backend.get_recent_messages("c1", 5, participant="ana"))).retryable


@pytest.mark.parametrize(
    "body",
    [
        None,  # bad_json: an HTML page
        "[]",
        '{"conversation_id": 5}',
        '{"conversation_id": ""}',
    ],
)
async def test_invalid_join_reply_is_not_retryable(
    server: LoopbackBackend, backend: HttpBackend, body: str | None
) -> None:
    if body is None:
        server.fail("bad_json")
    else:
        server.answer(200, body)

    error = await failure(backend.agent_joined(room="room-1", conversation_id="c1"))

    assert not error.retryable
    assert "invalid response" in str(error)


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        '{"messages": {}}',
        '{"messages": ["hi"]}',
        '{"messages": [{"role": "user", "text": "hi"}]}',
        # found by the fuzz pass: json.loads raises RecursionError, not ValueError, on deep
        # nesting, and it escaped as an unexpected error
        '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ],
    ids=["not-json", "not-a-list", "not-objects", "no-at", "nested-too-deeply"],
)
async def test_invalid_messages_reply_is_not_retryable(
    server: LoopbackBackend, backend: HttpBackend, body: str
) -> None:
    server.answer(200, body)

    error = await failure(backend.get_recent_messages("c1", 5, participant="ana"))

    assert not error.retryable
    assert "invalid response" in str(error)


async def test_a_delivery_reply_body_is_not_read_as_json(
    server: LoopbackBackend, backend: HttpBackend
) -> None:
    server.fail("bad_json")  # 200 with HTML: stored is stored
    await backend.deliver(turn(1))


async def test_unserialisable_payload_is_not_retryable_and_not_sent(
    server: LoopbackBackend, backend: HttpBackend
) -> None:
    for payload in ({"at": object()}, {"latency": float("nan")}):
        record = OutboxRecord(key="turn:s1:1", kind="turn", payload=payload)
        assert not (await failure(backend.deliver(record))).retryable
    no_key = OutboxRecord(key="", kind="turn", payload=turn(1).payload)
    assert not (await failure(backend.deliver(no_key))).retryable
    lone_surrogate = OutboxRecord(key="turn:s1:\ud800", kind="turn", payload=turn(1).payload)
    assert not (await failure(backend.deliver(lone_surrogate))).retryable
    assert server.requests == []


@pytest.mark.parametrize(
    ("key", "header"),
    [
        ("turn:session_1_alice_12.1:3", "turn:session_1_alice_12.1:3"),
        (
            "participant:conv_1:josé 李:connected:2025-01-01T00:00:00+00:00",
            "participant:conv_1:jos%C3%A9%20%E6%9D%8E:connected:2025-01-01T00:00:00+00:00",
        ),
        ("turn:50%:1\r\nX-Evil: 1", "turn:50%25:1%0D%0AX-Evil:%201"),
    ],
)
async def test_any_key_travels_percent_encoded_in_the_header(
    server: LoopbackBackend, backend: HttpBackend, key: str, header: str
) -> None:
    record = OutboxRecord(key=key, kind="turn", payload=turn(1).payload)

    await backend.deliver(record)
    await backend.deliver(record)

    assert [r.headers["Idempotency-Key"] for r in server.requests] == [header, header]
    assert "X-Evil" not in server.requests[0].headers
    assert server.requests[0].json["key"] == key
    assert [r.status for r in server.requests] == [201, 409]


# -- the token stays secret ---------------------------------------------------------------------


async def test_token_never_in_errors_or_logs(
    server: LoopbackBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="clara_voice")
    errors: list[BackendError] = []
    async with HttpBackend(server.base_url, token=SecretStr(TOKEN), timeout=0.2) as backend:
        # a backend that echoes the request's headers in its error body
        server.answer(400, f"bad request; you sent Authorization: Bearer {TOKEN}")
        server.answer(500, f"Bearer {TOKEN}")
        server.answer(200, f"<p>{TOKEN}</p>")
        server.fail("drop")
        server.fail("slow", seconds=0.6)
        for call in (
            lambda: backend.deliver(turn(1)),
            lambda: backend.deliver(turn(1)),
            lambda: backend.agent_joined(room="room-1", conversation_id="c1"),
            lambda: backend.deliver(turn(1)),
            lambda: backend.deliver(turn(1)),
        ):
            errors.append(await failure(call()))
        server.fail("down")
        errors.append(await failure(backend.deliver(turn(1))))
        await server.up()
    errors.append(await failure(backend.deliver(turn(1))))  # closed
    assert len(errors) == 7

    assert "[redacted]" in str(errors[0])
    for error in errors:
        text = "".join(traceback.format_exception(error))
        assert TOKEN not in text
        assert TOKEN not in repr(error)
    assert caplog.records
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert TOKEN not in repr(vars(record))
    assert TOKEN not in repr(backend) + repr(vars(backend))


def test_invalid_settings_are_refused_without_echoing_credentials() -> None:
    for url in ("ftp://example.com", "example.com/api", "http://", "http://h/x?y=1"):
        with pytest.raises(ValueError, match="backend URL"):
            HttpBackend(url, token=None)
    with pytest.raises(ValueError, match="credentials") as caught:
        HttpBackend("https://user:hunter2@example.com", token=None)
    assert "hunter2" not in str(caught.value)
    for timeout in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            HttpBackend("http://127.0.0.1:1", token=None, timeout=timeout)


# -- lifecycle ------------------------------------------------------------------------------------


async def test_aclose_is_idempotent_and_ends_the_backend(server: LoopbackBackend) -> None:
    backend = HttpBackend(server.base_url, token=SecretStr(TOKEN))
    await backend.aclose()  # never started
    backend = HttpBackend(server.base_url, token=SecretStr(TOKEN))
    async with backend:
        await backend.start()  # a second start is a no-op
        await backend.deliver(turn(1))
    await backend.aclose()
    await backend.aclose()

    error = await failure(backend.deliver(turn(2)))
    assert error.retryable  # the record stays in the outbox for the next run
    assert "closed" in str(error)
    with pytest.raises(RuntimeError, match="closed"):
        await backend.start()
    assert len(server.requests) == 1


async def test_no_socket_or_session_outlives_aclose(server: LoopbackBackend) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with HttpBackend(server.base_url, token=SecretStr(TOKEN), timeout=0.2) as backend:
            server.fail("drop")
            server.fail("status_500")
            server.fail("slow", seconds=0.6)
            for _ in range(3):
                await failure(backend.deliver(turn(1)))
            await asyncio.gather(*(backend.deliver(turn(seq)) for seq in range(2, 12)))
        del backend
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


# -- the response bound -------------------------------------------------------------------------


@asynccontextmanager
async def stalled_backend(status: int, head: bytes) -> AsyncIterator[str]:
    """A backend on 127.0.0.1 answering every request with ``status`` and a body that starts
    with ``head`` and never ends (it announces 1 MiB more, then stalls): a client reading
    the whole body waits until its timeout. Yields the base URL."""
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=status)
        response.content_length = len(head) + MAX_RESPONSE_BYTES
        response.content_type = "application/json"
        await response.prepare(request)
        await response.write(head)
        await release.wait()  # the rest never comes
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        release.set()
        await runner.cleanup()


def messages_body(size: int) -> bytes:
    """A valid messages reply of exactly ``size`` bytes: one message padded to fit."""
    empty = b'{"messages": [{"role": "user", "text": "", "at": "t1", "participant": "ana"}]}'
    return empty.replace(b'"text": ""', b'"text": "' + b"x" * (size - len(empty)) + b'"')


async def test_history_just_under_the_response_bound_is_loaded(
    server: LoopbackBackend, backend: HttpBackend
) -> None:
    """issue 11: a history reply of exactly MAX_RESPONSE_BYTES (1 MiB) is read whole and
    loaded."""
    body = messages_body(MAX_RESPONSE_BYTES)
    assert len(body) == MAX_RESPONSE_BYTES
    server.answer(200, body.decode())

    [message] = await backend.get_recent_messages("c1", 5, participant="ana")

    assert message.role == "user"
    assert len(message.text) == MAX_RESPONSE_BYTES - len(messages_body(0))


@pytest.mark.parametrize("call", ["history", "join"])
async def test_a_reply_just_over_the_response_bound_is_invalid_and_not_read_whole(
    call: str,
) -> None:
    """issue 11: a history (or join) reply of MAX_RESPONSE_BYTES + 1 bytes is refused as an
    invalid, non-retryable response after reading just those bytes: the backend sends
    them and stalls, so reading on would end in a (retryable) timeout instead."""
    head = messages_body(MAX_RESPONSE_BYTES + 1)
    async with (
        stalled_backend(200, head) as base_url,
        HttpBackend(base_url, token=SecretStr(TOKEN), timeout=3.0) as backend,
    ):
        if call == "history":
            error = await failure(backend.get_recent_messages("c1", 5, participant="ana"))
        else:
            error = await failure(backend.agent_joined(room="room-1", conversation_id="c1"))

    assert not error.retryable
    assert "invalid response" in str(error)
    assert f"over {MAX_RESPONSE_BYTES} bytes" in str(error)


@pytest.mark.parametrize("status", [201, 409])
async def test_a_delivery_answered_with_an_endless_body_is_stored_by_its_status(
    status: int,
) -> None:
    """issue 11: a delivery needs only the status: 2xx (or 409, already stored) with a body
    over MAX_RESPONSE_BYTES that never ends is a success, after reading at most the bound
    (reading on would end in a timeout, and the stored record would be sent again)."""
    async with (
        stalled_backend(status, b"x" * (MAX_RESPONSE_BYTES + 1)) as base_url,
        HttpBackend(base_url, token=SecretStr(TOKEN), timeout=3.0) as backend,
    ):
        await backend.deliver(turn(1))


async def test_a_refused_delivery_with_an_endless_body_says_why_without_reading_it_whole() -> None:
    """issue 11: a delivery refused (HTTP 400) with an error body over MAX_RESPONSE_BYTES
    that never ends fails as refused, not retryable, quoting the start of the body (not as
    a timeout after reading on)."""
    head = b'{"error": "text must not be empty"}' + b" " * MAX_RESPONSE_BYTES
    async with (
        stalled_backend(400, head) as base_url,
        HttpBackend(base_url, token=SecretStr(TOKEN), timeout=3.0) as backend,
    ):
        error = await failure(backend.deliver(turn(1)))

    assert not error.retryable
    assert error.status == 400
    assert str(error) == 'POST /turns: HTTP 400 Bad Request: {"error": "text must not be empty"}'
