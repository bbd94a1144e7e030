"""A team's own backend over HTTP: the :class:`Backend` protocol as JSON requests (seed 004).

The wire API is specified in ``docs/backend-api.md``; in short::

    POST {base}/agents/joined                        {"room", "conversation_id"}
    GET  {base}/conversations/{id}/messages?participant=P&limit=N
                                                     -> {"messages": [...]}, 404 = none
    POST {base}/turns | /participant-events | /sessions   payload + "key",
         Idempotency-Key: <key, percent-encoded>; 2xx = stored, 409 = already stored

One ``aiohttp.ClientSession`` (made by :meth:`HttpBackend.start`, or by the first call)
carries every request; :meth:`HttpBackend.aclose` closes it. Every failure becomes a
:class:`BackendError` in :meth:`HttpBackend._request`: connection errors, timeouts, 5xx,
401, 403 (fixable credentials), 408 and 429 are ``retryable`` (the outbox keeps the
record and tries again); any other refusal is not. The bearer token is sent in a header
and never appears in an error message or a log record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from pydantic import SecretStr
from yarl import URL

from clara_voice._json import parse_json
from clara_voice._lifecycle import AsyncService
from clara_voice.logging import get_logger
from clara_voice.persistence.base import BackendError, OutboxRecord, RecordKind, StoredMessage

log = get_logger("clara_voice.persistence.http")

RECORD_PATHS: dict[RecordKind, str] = {
    "turn": "/turns",
    "participant": "/participant-events",
    "session": "/sessions",
}
"""Where each outbox record kind is POSTed, relative to the base URL."""

# plus every 5xx; 401/403 are a credentials problem an operator fixes (CLARA_BACKEND_TOKEN),
# after which the same record succeeds, so they wait in the outbox instead of dead-lettering
_RETRYABLE_STATUSES = frozenset({401, 403, 408, 429})
_EXCERPT_CHARS = 200
_REDACTED = "[redacted]"
MAX_RESPONSE_BYTES = 1 << 20
"""The most of a response body read (the history the agent loads is well under it)."""


class HttpBackend(AsyncService):
    """The :class:`~clara_voice.persistence.base.Backend` of a team's own HTTP API.

    ``base_url`` is the API root (``https://api.example.com/clara``); ``token``, when set,
    is sent as ``Authorization: Bearer <token>``; ``timeout`` bounds each request in
    seconds, from connecting to reading the whole response.
    """

    def __init__(self, base_url: str, *, token: SecretStr | None, timeout: float = 5.0) -> None:
        self._base_url = _check_base_url(base_url)
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self._token = token
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def base_url(self) -> str:
        """The API root every path is appended to (no trailing slash)."""
        return self._base_url

    async def start(self) -> None:
        """Open the HTTP session; idempotent. Calls start it when it was not started."""
        if self._closed:
            raise RuntimeError("the http backend is closed")
        if self._session is not None:
            return
        # imported here: the package imports persistence while it is being initialised
        from clara_voice import __version__

        headers = {"User-Agent": f"clara-voice/{__version__}", "Accept": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=self._timeout)
        )

    async def aclose(self) -> None:
        """Close the HTTP session; idempotent. Later calls fail with a retryable error."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- Backend -------------------------------------------------------------------------------

    async def agent_joined(self, *, room: str, conversation_id: str) -> str:
        """``POST /agents/joined``; the conversation id the backend answers."""
        _, body = await self._request(
            "POST", "/agents/joined", json_body={"room": room, "conversation_id": conversation_id}
        )
        data = self._json_object("POST /agents/joined", body)
        answered = data.get("conversation_id")
        if not isinstance(answered, str) or not answered:
            raise self._invalid("POST /agents/joined", "no conversation_id string")
        return answered

    async def get_recent_messages(
        self, conversation_id: str, limit: int, *, participant: str
    ) -> list[StoredMessage]:
        """``GET /conversations/{id}/messages?participant=P&limit=N``, oldest first; []
        when unknown (404).

        Only ``participant``'s own messages are kept: a message naming another participant
        (or none: a backend that ignores the query) is dropped with a warning, so a backend
        that answers the whole conversation never puts one person's words in another's
        history. Messages whose role is neither ``user`` nor ``assistant`` are skipped too.
        """
        if not conversation_id or not participant or limit <= 0:
            return []
        path = f"/conversations/{quote(conversation_id, safe='')}/messages"
        status, body = await self._request(
            "GET",
            path,
            params={"participant": participant, "limit": str(limit)},
            accept=frozenset({404}),
        )
        if status == 404:
            return []
        items = self._json_object(f"GET {path}", body).get("messages")
        if not isinstance(items, list):
            raise self._invalid(f"GET {path}", "no messages list")
        messages: list[StoredMessage] = []
        unknown_roles = others = 0
        for item in items:
            if not (
                isinstance(item, dict)
                and isinstance(item.get("text"), str)
                and isinstance(item.get("at"), str)
            ):
                raise self._invalid(f"GET {path}", "a message without text and at strings")
            role = item.get("role")
            if item.get("participant") != participant:
                others += 1
            elif role == "user" or role == "assistant":
                messages.append(
                    StoredMessage(
                        role=role, text=item["text"], at=item["at"], participant=participant
                    )
                )
            else:
                unknown_roles += 1
        if unknown_roles:
            log.warning(
                "backend messages with unknown roles skipped",
                extra={"conversation_id": conversation_id, "skipped": unknown_roles},
            )
        if others:
            log.warning(
                "backend answered messages of other participants (or none named), dropped: "
                "history is per participant (docs/backend-api.md)",
                extra={"conversation_id": conversation_id, "dropped": others},
            )
        return messages[-limit:]  # a backend answering more than asked keeps the newest

    async def deliver(self, record: OutboxRecord) -> None:
        """POST the record's payload plus ``key`` with an ``Idempotency-Key`` header.

        2xx means stored, 409 means the key was already stored: both are success.
        """
        path = RECORD_PATHS[record.kind]
        if not record.key:
            raise BackendError(f"POST {path}: the record has an empty key", retryable=False)
        status, _ = await self._request(
            "POST",
            path,
            json_body={**record.payload, "key": record.key},
            headers={"Idempotency-Key": idempotency_header(record.key)},
            accept=frozenset({409}),
        )
        if status == 409:
            log.debug("backend record already stored", extra={"key": record.key, "path": path})

    # -- one place for requests and their failures ---------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        accept: frozenset[int] = frozenset(),
    ) -> tuple[int, bytes]:
        """Send one request; its status and body when 2xx or in ``accept``.

        Raises :class:`BackendError` for everything else (see the module docstring).
        """
        op = f"{method} {path}"
        session = await self._open_session(op)
        request_headers = dict(headers or {})
        data: bytes | None = None
        if json_body is not None:
            try:
                data = json.dumps(json_body, allow_nan=False, ensure_ascii=False).encode()
            except (TypeError, ValueError) as exc:
                raise BackendError(f"{op}: body is not JSON: {exc}", retryable=False) from exc
            request_headers["Content-Type"] = "application/json"
        url = URL(self._base_url + path, encoded=True)
        try:
            async with session.request(
                method,
                url,
                params=params,
                data=data,
                headers=request_headers,
                allow_redirects=False,  # a redirect is a misconfigured URL, and may leak the token
            ) as response:
                status, reason = response.status, response.reason or ""
                body = await _read_bounded(response.content, MAX_RESPONSE_BYTES)
        except TimeoutError as exc:
            raise self._failed(op, f"no answer within {self._timeout:g} s", retryable=True) from exc
        except aiohttp.ClientError as exc:
            raise self._failed(op, f"{type(exc).__name__}: {exc}", retryable=True) from exc
        if len(body) > MAX_RESPONSE_BYTES and (200 <= status < 300 or status in accept):
            if method == "GET" or path == "/agents/joined":  # answers that are read
                raise self._invalid(op, f"the body is over {MAX_RESPONSE_BYTES} bytes")
            body = b""  # a delivery only needs the status
        if 200 <= status < 300 or status in accept:
            return status, body
        retryable = status >= 500 or status in _RETRYABLE_STATUSES
        detail = f"HTTP {status} {reason}".rstrip()
        if excerpt := _excerpt(self._redact(body[:4096].decode("utf-8", errors="replace"))):
            detail += f": {excerpt}"
        raise self._failed(op, detail, retryable=retryable, status=status)

    async def _open_session(self, op: str) -> aiohttp.ClientSession:
        if self._session is None:
            if self._closed:
                # retryable: the record stays in the durable outbox for the next run
                raise BackendError(f"{op}: the http backend is closed", retryable=True)
            await self.start()
        assert self._session is not None
        return self._session

    def _failed(
        self, op: str, detail: str, *, retryable: bool, status: int | None = None
    ) -> BackendError:
        message = self._redact(f"{op}: {detail}")
        log.debug(
            "backend request failed",
            extra={"request": op, "status": status, "retryable": retryable},
        )
        return BackendError(message, retryable=retryable, status=status)

    def _invalid(self, op: str, what: str) -> BackendError:
        return self._failed(op, f"invalid response: {what}", retryable=False)

    def _json_object(self, op: str, body: bytes) -> dict[str, Any]:
        try:
            data = parse_json(body)
        except ValueError:
            raise self._invalid(op, "not JSON") from None
        if not isinstance(data, dict):
            raise self._invalid(op, "not a JSON object")
        return data

    def _redact(self, text: str) -> str:
        """``text`` without the token (a backend may echo request headers in an error)."""
        if self._token is not None and (secret := self._token.get_secret_value()):
            text = text.replace(secret, _REDACTED)
        return text


def _check_base_url(base_url: str) -> str:
    try:
        url = URL(base_url)
    except (TypeError, ValueError) as exc:
        raise ValueError("the backend URL is not a valid URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("the backend URL must be an http:// or https:// URL with a host")
    if url.user is not None or url.password is not None:
        raise ValueError("the backend URL must not contain credentials; pass the token")
    if url.query_string or url.fragment:
        raise ValueError("the backend URL must not have a query or a fragment")
    return str(url).rstrip("/")


# printable ASCII but "%" and space: the characters a key keeps in its header
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def idempotency_header(key: str) -> str:
    """``key`` as an ``Idempotency-Key`` header value: percent-encoded UTF-8, so keys made
    of participant identities (any Unicode) fit a header; printable ASCII other than ``%``
    is kept as it is, so ``unquote(header) == key`` always holds."""
    return quote(key, safe=_HEADER_SAFE, errors="surrogatepass")  # the body refuses those


async def _read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The body, or its first ``limit + 1`` bytes when it is longer (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit and (chunk := await content.read(min(1 << 16, limit + 1 - size))):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _excerpt(text: str) -> str:
    """The start of an error body on one line, short enough for a log line."""
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 1] + "…"


__all__ = ["MAX_RESPONSE_BYTES", "RECORD_PATHS", "HttpBackend", "idempotency_header"]
