"""``AsyncService``: the ``async with`` half of the start()/aclose() lifecycle every owner
of async work has here (STYLE.md: ``__aexit__`` calls ``aclose``)."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncService:
    """Mix in to get ``async with obj:`` → ``await obj.start()`` … ``await obj.aclose()``."""

    async def start(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
