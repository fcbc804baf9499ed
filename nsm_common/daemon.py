"""Run a daemon's asyncio main until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import resource
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


def raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one: the agent holds a netlink
    socket per pod namespace with a connection, and 1,024 is the common default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
