"""What the agent does when the kernel says a wire broke (told by the LinkWatch step).

- An interface of ours deleted or set down: the connection is requested again
  through the chain from its journal entry, as its client's refresh would be;
  the wire steps find the wire not whole and build it again, and Monitor shows
  the repaired connection. If that fails, Monitor shows it DOWN (its client
  reselects).
- The client pod's namespace gone: the connection is closed (the endpoint's
  lease and any tunnel go with it), and Monitor shows it deleted.
- The endpoint pod's namespace gone: Monitor shows the connection DOWN, and its
  client reselects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine

import grpc
import structlog

from nsm_agent.state.journal import JournalStore
from nsm_agent.state.restore import replay_request
from nsm_common.chain.begin import Begin
from nsm_common.chain.chain import Call, Chain
from nsm_common.chain.monitor import ConnectionEvents
from nsm_common.errors import NsmError

log = structlog.get_logger("nsm.agent")


class Repair:
    """The agent's answers to a broken wire (see the module docstring); one at a time per connection."""

    def __init__(self, store: JournalStore, chain: Chain, begin: Begin, events: ConnectionEvents) -> None:
        self.store = store
        self.chain = chain
        self.begin = begin
        self.events = events
        self._running: dict[str, asyncio.Task[None]] = {}

    def repair(self, conn_id: str, why: str) -> None:
        self._start(conn_id, lambda: self._repair(conn_id, why))

    def client_gone(self, conn_id: str, why: str) -> None:
        """Closes the connection, after a repair of it that runs already (never instead of it)."""
        before = self._running.get(conn_id)

        async def close() -> None:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            await self._close(conn_id, why)

        self._running.pop(conn_id, None)
        self._start(conn_id, close)

    def endpoint_gone(self, conn_id: str, why: str) -> None:
        log.info("connection down", id=conn_id, why=why)
        self.events.mark_down([conn_id])

    def _start(self, conn_id: str, work: Callable[[], Coroutine[object, object, None]]) -> None:
        if conn_id in self._running:  # one already runs: it looks at the whole wire (or closes it)
            return
        task = asyncio.get_running_loop().create_task(work())
        self._running[conn_id] = task

        def done(_: asyncio.Task[None]) -> None:
            if self._running.get(conn_id) is task:
                del self._running[conn_id]

        task.add_done_callback(done)

    async def _repair(self, conn_id: str, why: str) -> None:
        entry = self.store.read(conn_id)
        if entry is None or entry.reply is None:
            return
        started = time.monotonic()
        log.info("wire broken; repairing", id=conn_id, why=why)

        def still_wanted() -> bool:
            current = self.store.read(conn_id)
            return current is not None and current.reply == entry.reply

        try:
            await self.chain.request(replay_request(entry), Call(replay=still_wanted))
        except NsmError as exc:
            if exc.code == grpc.StatusCode.CANCELLED and not still_wanted():
                return  # closed or refreshed meanwhile: its client's own Request saw to it
            log.warning("repairing a wire failed; reporting the connection down", id=conn_id, error=exc.message)
            self.events.mark_down([conn_id])
            return
        except Exception:  # whatever it was, the client must hear the wire is broken
            log.exception("repairing a wire failed; reporting the connection down", id=conn_id)
            self.events.mark_down([conn_id])
            return
        log.info("wire repaired", id=conn_id, ms=round((time.monotonic() - started) * 1000, 1))

    async def _close(self, conn_id: str, why: str) -> None:
        try:
            await self.begin.close_now(conn_id, why)
        except Exception:  # what Close could not remove, its steps logged
            log.exception("closing a connection whose pod is gone failed", id=conn_id)

    async def idle(self) -> None:
        """Until no repair runs."""
        while self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
