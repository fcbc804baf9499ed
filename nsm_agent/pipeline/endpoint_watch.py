"""Notice at once when a local endpoint dies.

A killed endpoint's pod may still answer pings (the kernel does), so the data
plane cannot tell. Its unix socket can: the channel to it leaves READY the
moment the process is gone. Connections to an endpoint that does not come back
within a short grace are reported DOWN on the Monitor stream, and their clients
reselect. Endpoints behind other agents are left to the data-plane probes, so
that a restarting agent (hitless) does not make every client move.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import grpc

READY = grpc.ChannelConnectivity.READY


class EndpointWatch:
    """Reports the connections of a local endpoint DOWN when its unix socket stays gone past `grace`."""

    def __init__(self, on_down: Callable[[list[str]], None], grace: float = 0.3) -> None:
        self.on_down = on_down
        self.grace = grace
        self._users: dict[str, set[str]] = {}  # url -> connection ids
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def watch(self, url: str, conn_id: str, channel: grpc.aio.Channel) -> None:
        if not url.startswith("unix://"):
            return
        self._users.setdefault(url, set()).add(conn_id)
        task = self._tasks.get(url)
        if task is None or task.done():
            self._tasks[url] = asyncio.get_running_loop().create_task(self._run(url, channel))

    def forget(self, url: str, conn_id: str) -> None:
        users = self._users.get(url)
        if users is None:
            return
        users.discard(conn_id)
        if not users:
            del self._users[url]
            task = self._tasks.pop(url, None)
            if task is not None:
                task.cancel()

    async def _run(self, url: str, channel: grpc.aio.Channel) -> None:
        state = channel.get_state(try_to_connect=True)
        while url in self._users:
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)
            if state == READY:
                continue
            # Give a restarting endpoint a moment before calling it gone.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(channel.channel_ready(), timeout=self.grace)
            state = channel.get_state(try_to_connect=False)
            if state != READY and url in self._users:
                self.on_down(sorted(self._users[url]))

    async def aclose(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
