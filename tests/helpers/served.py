"""An asyncio gRPC server on a unix socket, run on a thread of its own, for tests that call
it with blocking clients (hypothesis drives them one example at a time)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc

from nsm_common.grpcutil import aio_server


@contextlib.contextmanager
def served(
    add: Callable[[grpc.aio.Server], Awaitable[None] | None], target: str
) -> Iterator[asyncio.AbstractEventLoop]:
    """Serve what ADD puts on a server (nsm's own options and limits) at TARGET until the
    block ends; yields the server's loop (to run checks on it)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: dict[str, Any] = {}

    async def main() -> None:
        server = aio_server()
        added = add(server)
        if added is not None:
            await added
        server.add_insecure_port(target)
        await server.start()
        stop["event"] = asyncio.Event()
        ready.set()
        await stop["event"].wait()
        await server.stop(None)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the server did not start"
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(stop["event"].set)
        thread.join(10)
        loop.close()
