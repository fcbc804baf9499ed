"""Fan-out of change events to watchers, shared by the stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")

# A watcher slower than this many pending events is cut off rather than
# letting the registry's memory grow without bound.
MAX_PENDING_EVENTS = 10_000


class Hub:
    """Fan-out of change events to watchers, in order, without gaps."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[object]] = set()

    def publish(self, event: object) -> None:
        for q in list(self.queues):
            if q.qsize() >= MAX_PENDING_EVENTS:
                self.queues.discard(q)
                q.put_nowait(OverflowError("watcher too slow"))
            else:
                q.put_nowait(event)


async def watch_hub(hub: Hub, snapshot: list[T]) -> AsyncIterator[object]:
    # Subscribing and taking the snapshot happen in one step of the event loop,
    # so no change can fall between them.
    """The current records as one list, then every change the hub publishes, with no gap between."""
    queue: asyncio.Queue[object] = asyncio.Queue()
    hub.queues.add(queue)
    try:
        yield snapshot
        while True:
            item = await queue.get()
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        hub.queues.discard(queue)
