"""Keep a connection: refresh it, watch both planes, heal it.

The client runtime does this, not the agent: it owns the interface name and
the lifetime, it sees the data plane from inside the pod, and it notices when
its agent dies (an agent cannot heal anything while it is down).

- Refresh before expiry, at a third of the remaining lifetime.
- Control plane: the Monitor stream breaks or reports the connection gone →
  request again along the same path (the wire is kept).
- Data plane: no echo reply from the far end for `misses` probe intervals →
  reselect (RESELECT_REQUESTED): the old wire goes, another endpoint is chosen,
  the interface keeps its name. The agent reporting the connection DOWN (its
  endpoint died) → the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import grpc

from nsm_api import connection_pb2_grpc, networkservice_pb2_grpc
from nsm_api.connection_pb2 import DELETE, DOWN, RESELECT_REQUESTED, Connection, MonitorScopeSelector, PathSegment
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_client.exclusions import overlap
from nsm_client.prober import Prober
from nsm_client.runtime import PodScope
from nsm_common.chain.path import DEFAULT_LIFETIME
from nsm_common.identity.transport import LOCAL_ONLY
from nsm_common.timeutil import now, ts_seconds
from nsm_common.urls import Address


class Refused(Exception):
    """The agent's reply is unusable (an address inside the pod's excluded prefixes); it was
    closed again."""


class Keeper:
    def __init__(
        self,
        agent: Address,
        request: NetworkServiceRequest,
        netns_path: str,
        probe_interval: float = 0.2,
        misses: int = 2,
        on_event: Callable[[str, Connection | None], None] = lambda what, conn: None,
        timeout: float = 15.0,
        prober: Prober | None = None,
        pod: PodScope | None = None,
    ) -> None:
        """Keeps `request`'s connection for the lifetime it asks (its first segment's `expires`),
        refreshed at a third of what is left. Keepers of one process may share one `prober`
        (one thread and one socket per namespace for all); its owner closes it. With POD, each
        Request excludes the prefixes of the pod's other connections (keepers of one pod share
        it, and ask one at a time, so that each sees the others' addresses)."""
        self.pod = pod
        self.agent = agent
        self.request = request
        self.netns_path = netns_path
        self.probe_interval = probe_interval
        self.misses = misses
        self.on_event = on_event
        self.timeout = timeout
        self.conn: Connection | None = None
        first = request.connection.path.path_segments
        asked = ts_seconds(first[0].expires) - now() if first and first[0].HasField("expires") else 0.0
        self.lifetime = asked if asked > 0 else DEFAULT_LIFETIME
        self._own_prober = prober is None
        self._prober = prober or Prober(probe_interval)
        # Made on first use: an asyncio channel belongs to the loop it was made in.
        self._channel: grpc.aio.Channel | None = None
        self._lock = asyncio.Lock()
        self._poke = asyncio.Event()

    @property
    def _ns(self) -> networkservice_pb2_grpc.NetworkServiceAsyncStub:
        if self._channel is None:
            self._channel = LOCAL_ONLY.aio_channel(self.agent)
        return networkservice_pb2_grpc.NetworkServiceStub(self._channel)

    @property
    def _monitor(self) -> connection_pb2_grpc.MonitorConnectionAsyncStub:
        if self._channel is None:
            self._channel = LOCAL_ONLY.aio_channel(self.agent)
        return connection_pb2_grpc.MonitorConnectionStub(self._channel)

    @property
    def key(self) -> str:
        return self.request.connection.id

    def _peer(self) -> str:
        assert self.conn is not None
        return self.conn.context.ip_context.dst_ip_addrs[0].split("/")[0]

    async def _ask(self, reselect: bool = False) -> Connection:
        req = NetworkServiceRequest()
        req.CopyFrom(self.request)
        if self.conn is not None:
            req.connection.CopyFrom(self.conn)
            req.connection.path.path_segments[0].expires.FromSeconds(int(now() + self.lifetime))
        if reselect:
            req.connection.state = RESELECT_REQUESTED
        if self.pod is None:
            conn: Connection = await self._ns.Request(req, timeout=self.timeout)
        else:
            async with self.pod.serial:
                excluded = self.pod.prepare(req, await self._connections())
                conn = await self._ns.Request(req, timeout=self.timeout)
                problem = overlap(conn, excluded)
                if problem:
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await self._ns.Close(conn, timeout=self.timeout)
                    raise Refused(problem)
        self.conn = conn
        if conn.context.ip_context.dst_ip_addrs:
            self._prober.watch(self.key, self.netns_path, self._peer())
        return conn

    async def _connections(self) -> list[Connection]:
        """The agent's connections now (its Monitor's initial state)."""
        stream = self._monitor.MonitorConnections(MonitorScopeSelector(), timeout=self.timeout)
        try:
            async for event in stream:
                return list(event.connections.values())
        finally:
            stream.cancel()
        return []

    async def adopt(self) -> Connection | None:
        """Take over a connection made earlier under this id (an init container's), if the agent has it."""
        selector = MonitorScopeSelector(path_segments=[PathSegment(id=self.key)])
        stream = self._monitor.MonitorConnections(selector, timeout=self.timeout)
        try:
            async for event in stream:
                for conn in event.connections.values():
                    found = Connection()
                    found.CopyFrom(conn)
                    found.path.index, found.id = 0, found.path.path_segments[0].id
                    return found
                return None
        finally:
            stream.cancel()
        return None

    async def connect(self) -> Connection:
        """Adopt the connection under this id if the agent has it (an init container made it), else request it."""
        async with self._lock:
            self.conn = await self.adopt()
            adopted = self.conn is not None
            conn = await self._ask()
        self.on_event("adopted" if adopted else "connected", conn)
        return conn

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the connection until `stop` is set (refresh, follow, probe, heal), then close it."""
        if self.conn is None:
            await self.connect()
        tasks = [asyncio.create_task(t) for t in (self._refresh_loop(), self._monitor_loop(), self._probe_loop())]
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await t
            await self.close()

    async def close(self) -> None:
        self._prober.unwatch(self.key)
        if self._own_prober:
            self._prober.close()
        if self.conn is not None:
            try:
                # Waits out a reconnect (the agent restarting as the pod goes), within the timeout.
                await self._ns.Close(self.conn, timeout=self.timeout, wait_for_ready=True)
                self.on_event("closed", self.conn)
            except grpc.aio.AioRpcError as exc:  # its lease ends it at the agent
                self.on_event(f"close failed: {exc.code().name}: {exc.details()}", self.conn)
        if self._channel is not None:
            await self._channel.close(None)

    async def _heal(self, reselect: bool, why: str) -> None:
        """Ask again (or reselect) until the agent answers and the far end does too: a heal is
        reported only once the data plane carries an echo, and one that carries nothing is
        followed by a reselect."""
        started = time.monotonic()
        async with self._lock:
            while True:
                try:
                    conn = await self._ask(reselect=reselect)
                except grpc.aio.AioRpcError as exc:
                    self.on_event(f"heal attempt failed ({why}): {exc.code().name}: {exc.details()}", None)
                    await asyncio.sleep(self.probe_interval)
                    continue
                except Refused as exc:
                    self.on_event(f"heal attempt refused ({why}): {exc}", None)
                    reselect = True
                    await asyncio.sleep(self.probe_interval)
                    continue
                if await self._carries(conn):
                    break
                self.on_event(f"heal attempt carries nothing ({why}); reselecting", conn)
                reselect = True
        took = (time.monotonic() - started) * 1000
        self.on_event(f"healed ({why}, {'reselected' if reselect else 'same path'}) in {took:.0f} ms", conn)

    async def _carries(self, conn: Connection) -> bool:
        """The far end answers a probe within a few probe intervals (true when there is none to probe)."""
        if not conn.context.ip_context.dst_ip_addrs:
            return True
        deadline = time.monotonic() + (self.misses + 3) * self.probe_interval
        while time.monotonic() < deadline:
            if self._prober.answered(self.key):
                return True
            await asyncio.sleep(self.probe_interval / 4)
        return False

    async def _refresh_loop(self) -> None:
        while True:
            assert self.conn is not None
            left = ts_seconds(self.conn.path.path_segments[0].expires) - now()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._poke.wait(), timeout=max(0.2, left / 3))
            self._poke.clear()
            try:
                async with self._lock:
                    await self._ask()
                self.on_event("refreshed", self.conn)
            except grpc.aio.AioRpcError as exc:
                self.on_event(f"refresh failed: {exc.code().name}: {exc.details()}", None)
            except Refused as exc:
                self.on_event(f"refresh refused: {exc}", None)

    async def _monitor_loop(self) -> None:
        while True:
            selector = MonitorScopeSelector(path_segments=[PathSegment(id=self.key)])
            try:
                async for event in self._monitor.MonitorConnections(selector):
                    if self._lock.locked():
                        continue  # our own heal or refresh is what the agent reports
                    if event.type == DELETE and event.connections:
                        await self._heal(reselect=False, why="the agent reports the connection gone")
                    elif any(c.state == DOWN for c in event.connections.values()):
                        await self._heal(reselect=True, why="the agent reports the endpoint down")
            except grpc.aio.AioRpcError:
                pass
            # The stream broke: the agent restarted or died. Ask again along the same path.
            await asyncio.sleep(self.probe_interval)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._heal(reselect=False, why="monitor stream broke")

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval / 2)
            if self._prober.silent_for(self.key) > self.misses * self.probe_interval and not self._lock.locked():
                await self._heal(reselect=True, why="no answer from the far end")
