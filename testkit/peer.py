"""What every loopback peer of the test kit does with its request handlers: track them,
wake waiters on every recorded event, and cancel the ones left when it closes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PeerHandlers:
    """Mixin for loopback peers; call :meth:`_init_handlers` in ``__init__``."""

    default_timeout = 10.0

    def _init_handlers(self) -> None:
        self._handlers: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Condition()

    def _tracked(self, handler: Handler) -> Handler:
        """``handler``, tracked while it runs; waiters are woken when it ends."""

        async def run(request: web.Request) -> web.StreamResponse:
            task = asyncio.current_task()
            if task is not None:
                self._handlers.add(task)
            try:
                return await handler(request)
            finally:
                if task is not None:
                    self._handlers.discard(task)
                await self._notify()

        return run

    async def wait_for(self, predicate: Callable[[], T | None], timeout: float | None = None) -> T:
        """Wait until ``predicate()`` is truthy (re-checked on every recorded event); its value.

        Raises :class:`TimeoutError` after ``timeout`` seconds (the peer's default if None).
        """
        async with self._changed:
            result = await asyncio.wait_for(
                self._changed.wait_for(predicate), timeout or self.default_timeout
            )
        assert result is not None
        return result

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _cancel_handlers(self) -> None:
        """None may outlive the peer."""
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
