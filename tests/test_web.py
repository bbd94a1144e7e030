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


async def post(url: str, body: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST ``body`` as JSON (a ``str`` is sent as it is)."""
    data = {"data": body} if isinstance(body, str) else {"json": body}
    async with aiohttp.ClientSession() as session, session.post(url, **data) as response:
        return response.status, await response.json(), dict(response.headers)


async def test_the_token_lets_the_browser_join_its_room_with_its_session_type(page: str) -> None:
    status, body, headers = await post(
        f"{page}/api/token", {"room": "demo", "identity": "user-3fa2", "session_type": "text"}
    )
    assert status == 200, body
    assert body["url"] == "ws://localhost:7880"  # what the browser reaches, not the worker
    assert (body["room"], body["identity"]) == ("demo", "user-3fa2")
    assert headers["Cache-Control"] == "no-store"
    claims = api.TokenVerifier(KEY, SECRET).verify(body["token"])
    assert claims.identity == "user-3fa2"
    assert claims.video is not None and claims.video.room == "demo" and claims.video.room_join
    assert not claims.video.room_admin and not claims.video.room_create
    assert claims.attributes == {"clara.session_type": "text"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"room": "demo"}, "identity must be"),
        ({"room": "", "identity": "u"}, "room must be"),
        ({"room": "../etc", "identity": "u"}, "room must be"),
        ({"room": "demo", "identity": "u" * 129}, "identity must be"),
        ({"room": "demo", "identity": "u", "session_type": "video"}, "session_type must be"),
        (["demo"], "JSON object"),
        ("[" * 2000 + "]" * 2000, "JSON object"),  # nested deeper than json.loads recurses
    ],
    ids=["no-identity", "empty-room", "path-room", "long-identity", "bad-type", "list", "deep"],
)
async def test_a_bad_token_request_says_what_is_wrong(page: str, body: Any, message: str) -> None:
    status, answer, _ = await post(f"{page}/api/token", body)
    assert status == 400
    assert message in answer["error"]


async def test_token_requests_are_rate_limited(page: str) -> None:
    request = {"room": "demo", "identity": "u"}
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
