"""``python -m clara_voice web``: the page, its token endpoint, and where it may listen."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from livekit import api

from clara_voice.config import Settings, load_settings
from clara_voice.web import TOKEN_BURST, WebError, check, serve
from testkit.worker import free_port, run_clara

KEY, SECRET = "web-test-key", "web-test-secret-long-enough-for-hmac"


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    folder = tmp_path / "dist"
    folder.mkdir()
    (folder / "index.html").write_text("<!doctype html><title>Clara</title>")
    (folder / "app.js").write_text("console.log('clara')")
    return folder


@pytest.fixture
def web_settings(dist: Path) -> Settings:
    return load_settings(
        livekit_url="ws://livekit:7880",
        web_livekit_url="ws://localhost:7880",
        livekit_api_key=KEY,
        livekit_api_secret=SECRET,
        web_dist=dist,
        web_port=free_port(),
    )


@pytest.fixture
async def page(web_settings: Settings) -> AsyncIterator[str]:
    ready = asyncio.Event()
    serving = asyncio.create_task(serve(web_settings, ready=ready))
    async with asyncio.timeout(10):
        await ready.wait()
    yield f"http://127.0.0.1:{web_settings.web_port}"
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)


async def post(
    url: str, body: Any, *, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST ``body`` as JSON (a ``str`` is sent as it is, still labelled JSON)."""
    data = {"data": body} if isinstance(body, str) else {"json": body}
    sent = {"Content-Type": "application/json", **(headers or {})}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, headers=sent, **data) as response,
    ):
        return response.status, await response.json(), dict(response.headers)


async def test_the_token_lets_the_browser_join_its_room_with_its_session_type(page: str) -> None:
    status, body, headers = await post(
        f"{page}/api/token", {"room": "demo", "name": "Ada", "session_type": "text"}
    )
    assert status == 200, body
    assert body["url"] == "ws://localhost:7880"  # what the browser reaches, not the worker
    assert body["room"] == "demo"
    assert headers["Cache-Control"] == "no-store"
    claims = api.TokenVerifier(KEY, SECRET).verify(body["token"])
    assert claims.identity == body["identity"]
    assert claims.name == "Ada"
    assert claims.video is not None and claims.video.room == "demo" and claims.video.room_join
    assert claims.attributes == {"clara.session_type": "text"}


async def test_a_token_grants_only_what_a_person_talking_to_clara_needs(page: str) -> None:
    """Regression (issue 16, critical 2): the page's tokens carried livekit's default
    grants (any track source, metadata updates)."""
    _, body, _ = await post(f"{page}/api/token", {"room": "demo"})
    video = api.TokenVerifier(KEY, SECRET).verify(body["token"]).video
    assert video is not None
    assert video.can_publish_sources == ["microphone"]  # no camera, no screen
    assert video.can_publish_data and video.can_subscribe
    assert not video.room_admin and not video.room_create and not video.room_record
    assert not video.can_update_own_metadata and not video.agent and not video.hidden


async def test_the_server_picks_every_identity_and_a_page_gets_only_its_own_back(
    page: str,
) -> None:
    """Regression (issue 16, critical 2): the endpoint signed a token for whatever identity
    the caller asked for, so anyone could join as "alice" and take over her session."""
    status, first, _ = await post(f"{page}/api/token", {"room": "demo", "identity": "alice"})
    assert status == 200
    _, second, _ = await post(f"{page}/api/token", {"room": "demo", "identity": "alice"})
    assert first["identity"] != "alice" and second["identity"] != "alice"
    assert first["identity"] != second["identity"]
    assert len(first["identity"]) >= 24  # 96 random bits

    # the page that reconnects presents its ticket and keeps its identity; nobody else can
    _, again, _ = await post(f"{page}/api/token", {"room": "demo", "resume": first["resume"]})
    assert again["identity"] == first["identity"]
    forged = first["resume"][:-2] + ("AA" if not first["resume"].endswith("AA") else "BB")
    _, other, _ = await post(f"{page}/api/token", {"room": "demo", "resume": forged})
    assert other["identity"] not in (first["identity"], "alice")


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Host": "evil.example"}, 403),  # DNS rebinding: a foreign name for this address
        ({"Origin": "http://evil.example"}, 403),  # a page elsewhere calling this one
        ({"Origin": "null"}, 403),
        ({"Content-Type": "text/plain"}, 415),  # a form post, which needs no preflight
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ],
    ids=["foreign-host", "foreign-origin", "null-origin", "text-plain", "form"],
)
async def test_only_same_origin_json_requests_get_a_token(
    page: str, headers: dict[str, str], status: int
) -> None:
    """Regression (issue 16, critical 2): the endpoint checked no Host and no Origin and
    parsed any content type, so a web page the user visited could mint tokens from it."""
    got, answer, _ = await post(f"{page}/api/token", {"room": "demo"}, headers=headers)
    assert got == status
    assert "token" not in answer
    own = {"Origin": page}  # the page itself
    assert (await post(f"{page}/api/token", {"room": "demo"}, headers=own))[0] == 200


async def test_allowed_host_names_and_a_pinned_room(web_settings: Settings) -> None:
    settings = web_settings.model_copy(
        update={"web_allowed_hosts": "clara.example.com", "web_room": "lobby"}
    )
    ready = asyncio.Event()
    serving = asyncio.create_task(serve(settings, ready=ready))
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        url = f"http://127.0.0.1:{settings.web_port}/api/token"
        named = {"Host": "clara.example.com", "Origin": "https://clara.example.com"}
        status, body, _ = await post(url, {}, headers=named)
        assert status == 200 and body["room"] == "lobby"
        status, body, _ = await post(url, {"room": "elsewhere"})
        assert status == 403 and "lobby" in body["error"]
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"room": ""}, "room must be"),
        ({"room": "../etc"}, "room must be"),
        ({"room": "demo", "name": "x" * 65}, "name must be"),
        ({"room": "demo", "name": "bell\u0007"}, "name must be"),
        ({"room": "demo", "session_type": "video"}, "session_type must be"),
        (["demo"], "JSON object"),
        ("[" * 2000 + "]" * 2000, "JSON object"),  # nested deeper than json.loads recurses
    ],
    ids=["empty-room", "path-room", "long-name", "control-name", "bad-type", "list", "deep"],
)
async def test_a_bad_token_request_says_what_is_wrong(page: str, body: Any, message: str) -> None:
    status, answer, _ = await post(f"{page}/api/token", body)
    assert status == 400
    assert message in answer["error"]


async def test_token_requests_are_rate_limited(page: str) -> None:
    request = {"room": "demo"}
    statuses = [(await post(f"{page}/api/token", request))[0] for _ in range(int(TOKEN_BURST) + 3)]
    assert statuses[: int(TOKEN_BURST)] == [200] * int(TOKEN_BURST)
    assert statuses[-1] == 429


async def test_the_page_and_its_files_are_served(page: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{page}/") as response:
            assert response.status == 200
            assert "<title>Clara</title>" in await response.text()
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        async with session.get(f"{page}/app.js") as response:
            assert response.status == 200
        async with session.get(f"{page}/../secret") as response:
            assert response.status == 404


def test_listening_beyond_this_machine_needs_an_explicit_yes(web_settings: Settings) -> None:
    remote = web_settings.model_copy(update={"web_host": "0.0.0.0"})
    with pytest.raises(WebError, match="CLARA_WEB_ALLOW_REMOTE"):
        check(remote)
    allowed = remote.model_copy(update={"web_allow_remote": True})
    assert check(allowed) == web_settings.web_dist.resolve()


def test_the_command_refuses_in_one_line(tmp_path: Path, dist: Path) -> None:
    remote = run_clara(tmp_path, ["web"], CLARA_WEB_HOST="0.0.0.0", CLARA_WEB_DIST=str(dist))
    assert remote.returncode == 2
    assert remote.stderr.count("\n") == 1
    assert "anyone who reaches it" in remote.stderr and "CLARA_WEB_ALLOW_REMOTE" in remote.stderr

    unbuilt = run_clara(tmp_path, ["web"], CLARA_WEB_DIST=str(tmp_path / "nowhere"))
    assert unbuilt.returncode == 2
    assert "not built" in unbuilt.stderr and "make web" in unbuilt.stderr


async def test_a_busy_port_is_one_line(tmp_path: Path, dist: Path, page: str) -> None:
    port = page.rsplit(":", 1)[1]
    busy = await asyncio.to_thread(
        run_clara, tmp_path, ["web"], CLARA_WEB_PORT=port, CLARA_WEB_DIST=str(dist)
    )
    assert busy.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    assert "Traceback" not in busy.stderr
