"""Notice at once when a local endpoint dies.

A killed endpoint's pod may still answer pings (the kernel does), so the data
plane cannot tell. Its unix socket can: the channel to it leaves READY the
moment the process is gone. Connections to an endpoint that does not come back
within a short grace are reported DOWN on the Monitor stream, and their clients
reselect.

An endpoint behind another agent is that agent's to watch: `PeerWatch` follows the
Monitor of the agents this one sends connections to, and passes on what they report
DOWN, or delete, of ours. A broken stream is not a death: a restarting agent
(hitless) carries its connections on, and its first answer after (the initial state)
is not read as news; the data-plane probes judge a silent peer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import grpc
import structlog

from nsm_api import connection_pb2_grpc
from nsm_api.connection_pb2 import DELETE, DOWN, INITIAL_STATE_TRANSFER, MonitorScopeSelector

log = structlog.get_logger("nsm.agent")

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


class PeerWatch:
    """Follows, per other agent, one Monitor stream; a connection of ours it reports DOWN or
    deleted is reported DOWN here (`on_down`), and the client reselects."""

    def __init__(self, on_down: Callable[[list[str]], None], backoff: float = 2.0) -> None:
        self.on_down = on_down
        self.backoff = backoff
        self._users: dict[str, dict[str, str]] = {}  # url -> their connection id -> ours
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def watch(self, url: str, ours: str, theirs: str, channel: Callable[[], grpc.aio.Channel | None]) -> None:
        """Follow connection THEIRS at the agent at URL (a tcp:// URL), ours being OURS; CHANNEL
        gives the channel to it now (it may be replaced)."""
        if not url.startswith("tcp://"):
            return
        self._users.setdefault(url, {})[theirs] = ours
        task = self._tasks.get(url)
        if task is None or task.done():
            self._tasks[url] = asyncio.get_running_loop().create_task(self._run(url, channel))

    def forget(self, url: str, ours: str) -> None:
        """Before our Close goes there: its DELETE is no news."""
        users = self._users.get(url)
        if users is None:
            return
        for theirs in [t for t, o in users.items() if o == ours]:
            del users[theirs]
        if not users:
            del self._users[url]
            task = self._tasks.pop(url, None)
            if task is not None:
                task.cancel()

    async def _run(self, url: str, channel: Callable[[], grpc.aio.Channel | None]) -> None:
        while url in self._users:
            current = channel()
            if current is not None:
                stub = connection_pb2_grpc.MonitorConnectionStub(current)
                try:
                    async for event in stub.MonitorConnections(MonitorScopeSelector()):
                        if event.type == INITIAL_STATE_TRANSFER:
                            continue
                        users = self._users.get(url, {})
                        gone = [users[cid] for cid, c in event.connections.items()
                                if cid in users and (event.type == DELETE or c.state == DOWN)]  # fmt: skip
                        if gone:
                            log.info("the next hop reports connections down", url=url, ids=gone)
                            self.on_down(sorted(gone))
                except (grpc.aio.AioRpcError, grpc.aio.UsageError) as exc:  # UsageError: a channel closed
                    log.debug("next hop's monitor stream ended", url=url, error=str(exc))
            await asyncio.sleep(self.backoff)

    async def aclose(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
