"""Run a daemon's asyncio main until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable


def run_until_signal(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Call `serve(stop)`; `stop` is set by SIGINT or SIGTERM so that serve can clean up."""

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
