"""What tests wait for in an outbox that the product never waits for: every record put so
far delivered or dead-lettered, and a sweep for orphaned files now rather than at the
writer's next turn."""

from __future__ import annotations

from clara_voice.persistence.outbox import Outbox


async def drained(outbox: Outbox) -> None:
    """Until every record put so far is delivered or dead-lettered and the files are tidied
    (the writer found nothing left); bound it with a timeout."""
    await outbox._drained.wait()


async def adopt_orphans(outbox: Outbox) -> int:
    """Sweep the folder for files of ended processes now; the records adopted."""
    if not outbox._started or outbox._closing or outbox._closed:
        return 0
    return outbox._adopted(await outbox._run(outbox._store.sweep))


__all__ = ["adopt_orphans", "drained"]
