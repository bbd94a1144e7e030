"""``python -m clara_voice web``: the web page to talk to Clara, and its token endpoint.

Serves the built page (``CLARA_WEB_DIST``, built from ``web/`` by ``make web``) and
``POST /api/token``: ``{"room", "name", "session_type", "resume"}`` → ``{"url", "token",
"room", "identity", "resume"}``, a join token minted with the configured LiveKit keys and
the LiveKit URL the browser connects to (``CLARA_WEB_LIVEKIT_URL``, else ``LIVEKIT_URL``).

The endpoint cannot be used to impersonate anyone (clara_voice._web_guard): the identity is
always the server's choice (random), ``name`` is only a display name, and ``resume`` (the
ticket the last answer carried) gives a reconnecting page its own identity back. It answers
same-origin JSON requests only (``Host`` one of the page's names, ``Origin`` its own: 403
otherwise; 415 for another body type), the room is checked (or pinned by
``CLARA_WEB_ROOM``), and the token grants only what a person talking to Clara needs
(clara_voice.tokens). Whoever reaches the page still gets a token for a room, so it listens
on this machine only (``CLARA_WEB_HOST``, 127.0.0.1) unless ``CLARA_WEB_ALLOW_REMOTE`` says
otherwise; a bad address, a busy port or a page not built is one line and exit 2.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from clara_voice._json import parse_json
from clara_voice._names import ROOM_NAME, page_hosts
from clara_voice._ratelimit import RateLimits
from clara_voice._urls import is_loopback
from clara_voice._web_guard import (
    MAX_NAME,
    ResumeTickets,
    display_name,
    foreign_request,
    json_body,
    new_identity,
)
from clara_voice.config import Settings
from clara_voice.logging import configure_logging, get_logger
from clara_voice.states import SESSION_TYPES
from clara_voice.tokens import mint_token

log = get_logger("clara_voice.web")

TOKEN_TTL = timedelta(minutes=15)
"""A token is only used to connect (and reconnect): a page asks for a fresh one each time."""
MAX_REQUEST_BYTES = 4096
TOKEN_BURST, TOKEN_PER_SECOND = 20.0, 2.0
"""Tokens per client address: 20 at once, then 2 a second (a page asks once per connect)."""
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class WebError(Exception):
    """Why the page cannot be served (one line for the command line)."""


def build_app(settings: Settings, dist: Path) -> web.Application:
    """The page's application: the static files of ``dist`` and the token endpoint."""
    limits = RateLimits(capacity=TOKEN_BURST, rate=TOKEN_PER_SECOND)
    livekit_url = settings.web_livekit_url or settings.livekit_url
    secret = settings.livekit_api_secret.get_secret_value()
    tickets = ResumeTickets(secret)
    hosts = page_hosts(settings.web_host, settings.web_allowed_hosts)

    async def token(request: web.Request) -> web.Response:
        if (why := foreign_request(request.headers, hosts)) is not None:
            log.warning(
                "token request refused",
                extra={"why": why, "host": request.headers.get("Host", "")[:128]},
            )
            return _error(403, why)
        if not json_body(request.headers):
            return _error(415, "the body must be JSON (Content-Type: application/json)")
        if not limits.admit(request.remote or ""):
            return _error(429, "too many token requests, try again in a moment")
        try:
            body = parse_json(await request.read())
        except ValueError:
            return _error(400, "the body must be a JSON object")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        room = settings.web_room or _name(body.get("room"))
        session_type = body.get("session_type", "voice-vad")
        if room is None:
            return _error(400, "room must be 1-128 letters, digits or . _ : @ - (not first)")
        if settings.web_room and body.get("room") not in (None, "", settings.web_room):
            return _error(403, f"this page's tokens are for the room {settings.web_room} only")
        if session_type not in SESSION_TYPES:
            return _error(400, f"session_type must be one of {', '.join(SESSION_TYPES)}")
        name = display_name(body["name"]) if body.get("name") else None
        if body.get("name") and name is None:
            return _error(400, f"name must be 1-{MAX_NAME} printable characters")
        resumed = tickets.identity(body["resume"]) if body.get("resume") else None
        identity = resumed or new_identity()
        jwt = mint_token(
            api_key=settings.livekit_api_key,
            api_secret=secret,
            room=room,
            identity=identity,
            name=name,
            session_type=session_type,
            agent_name=settings.agent_name,
            ttl=TOKEN_TTL,
        )
        log.info(
            "token issued", extra={"room": room, "participant": identity, "resumed": bool(resumed)}
        )
        answer = {
            "url": livekit_url,
            "token": jwt,
            "room": room,
            "identity": identity,
            "resume": tickets.issue(identity),
        }
        return web.json_response(answer, headers={"Cache-Control": "no-store", **_HEADERS})

    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(dist / "index.html", headers=_HEADERS)

    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.router.add_post("/api/token", token)
    app.router.add_get("/", index)
    app.router.add_static("/", dist, show_index=False, follow_symlinks=False)
    return app


def check(settings: Settings) -> Path:
    """The built page's folder, once the address is allowed; :class:`WebError` otherwise."""
    if not (settings.web_allow_remote or is_loopback(settings.web_host)):
        raise WebError(
            f"CLARA_WEB_HOST={settings.web_host} would hand LiveKit tokens to anyone who "
            "reaches it: keep 127.0.0.1, or set CLARA_WEB_ALLOW_REMOTE=true"
        )
    dist = settings.web_dist.resolve()
    if not (dist / "index.html").is_file():
        raise WebError(
            f"the web page is not built ({dist / 'index.html'} is missing): run `make web` "
            "(or `npm ci && npm run build` in web/), or set CLARA_WEB_DIST"
        )
    return dist


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Serve the page until cancelled; ``ready`` is set once it listens."""
    dist = check(settings)
    runner = web.AppRunner(build_app(settings, dist), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.web_host, settings.web_port)
        try:
            await site.start()
        except OSError as exc:
            raise WebError(
                f"cannot listen on {settings.web_host}:{settings.web_port}: {exc.strerror} "
                "(set CLARA_WEB_PORT)"
            ) from None
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        log.info(
            f"web page at http://{shown}:{port}/",
            extra={"livekit_url": settings.web_livekit_url or settings.livekit_url},
        )
        if not is_loopback(settings.web_host):
            log.warning(
                "the web page listens beyond this machine: anyone who reaches it "
                "gets a LiveKit token (CLARA_WEB_ALLOW_REMOTE)"
            )
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str], settings: Settings) -> int:
    """The ``web`` command: serve until interrupted."""
    if argv:
        print(
            f"clara_voice: web takes no arguments (got {' '.join(argv)}); "
            "use CLARA_WEB_HOST and CLARA_WEB_PORT",
            file=sys.stderr,
        )
        return 2
    fmt = "console" if settings.log_format == "auto" else settings.log_format
    configure_logging(level=settings.log_level, fmt=fmt, stream=sys.stderr)
    try:
        asyncio.run(serve(settings))
    except WebError as exc:
        print(f"clara_voice: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def _name(value: object) -> str | None:
    return value if isinstance(value, str) and ROOM_NAME.match(value) else None


def _error(status: int, message: str) -> web.Response:
    body: dict[str, Any] = {"error": message}
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store", **_HEADERS})


__all__ = ["TOKEN_TTL", "WebError", "build_app", "check", "main", "serve"]
