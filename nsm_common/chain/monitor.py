"""The MonitorConnection service: initial state, then updates and deletes."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable

from nsm_api import connection_pb2_grpc
from nsm_api.connection_pb2 import (
    DELETE,
    DOWN,
    INITIAL_STATE_TRANSFER,
    UPDATE,
    Connection,
    ConnectionEvent,
    ConnectionEventType,
    MonitorScopeSelector,
)
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Call, Next, Step
from nsm_common.chain.monitor_scope import selects
from nsm_common.grpcutil import Ctx
from nsm_common.identity.transport import AGENTS, Access
from nsm_common.tokens import subject

MAX_PENDING = 10_000


class ConnectionEvents:
    """The current connections of this hop and a fan-out of their changes."""

    def __init__(self) -> None:
        # Serialized: a parsed message keeps an arena of its own, ~2.5 KiB a connection.
        self.current: dict[str, bytes] = {}
        # Every path segment's id to the connection that holds it: a caller names a
        # connection by its own segment's id (see `find`).
        self._by_segment: dict[str, str] = {}
        self._subscribers: set[asyncio.Queue[ConnectionEvent | None]] = set()

    def _publish(self, kind: ConnectionEventType.ValueType, conn: Connection) -> None:
        event = ConnectionEvent(type=kind)
        event.connections[conn.id].CopyFrom(conn)
        for q in list(self._subscribers):
            if q.qsize() >= MAX_PENDING:
                self._subscribers.discard(q)
                q.put_nowait(None)  # ends a stream that cannot keep up
            else:
                q.put_nowait(event)

    def update(self, conn: Connection) -> None:
        self.current[conn.id] = conn.SerializeToString()
        for seg in conn.path.path_segments:
            self._by_segment[seg.id] = conn.id
        self._publish(UPDATE, conn)

    def find(self, some_id: str) -> Connection | None:
        """The connection this hop holds whose id, or one of whose path segments' ids, is SOME_ID."""
        cid = some_id if some_id in self.current else self._by_segment.get(some_id, "")
        wire = self.current.get(cid)
        return Connection.FromString(wire) if wire is not None else None

    def mark_down(self, conn_ids: list[str]) -> None:
        """Tell watchers these connections are DOWN (their endpoint is gone)."""
        for cid in conn_ids:
            wire = self.current.get(cid)
            if wire is None:
                continue
            conn = Connection.FromString(wire)
            if conn.state != DOWN:
                conn.state = DOWN
                self.current[cid] = conn.SerializeToString()
                self._publish(UPDATE, conn)

    def delete(self, conn: Connection) -> None:
        """Tell watchers the connection is gone (if this hop held it)."""
        old = self.current.pop(conn.id, None)
        if old is not None:
            gone = Connection.FromString(old)
            for seg in gone.path.path_segments:
                if self._by_segment.get(seg.id) == conn.id:
                    del self._by_segment[seg.id]
            self._publish(DELETE, gone)

    async def stream(
        self, selector: MonitorScopeSelector, visible: Callable[[Connection], bool] | None = None
    ) -> AsyncIterator[ConnectionEvent]:
        """The connections SELECTOR picks (and VISIBLE lets this caller see): first all of them,
        then every change."""

        def shown(conn: Connection) -> bool:
            return selects(selector, conn) and (visible is None or visible(conn))

        queue: asyncio.Queue[ConnectionEvent | None] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            initial = ConnectionEvent(type=INITIAL_STATE_TRANSFER)
            for cid, wire in self.current.items():
                conn = Connection.FromString(wire)
                if shown(conn):
                    initial.connections[cid].CopyFrom(conn)
            yield initial
            while True:
                event = await queue.get()
                if event is None:
                    return
                picked = ConnectionEvent(type=event.type)
                for cid, conn in event.connections.items():
                    if shown(conn):
                        picked.connections[cid].CopyFrom(conn)
                if picked.connections:
                    yield picked
        finally:
            self._subscribers.discard(queue)


class Monitor(Step):
    """Publishes each connection this hop holds to the Monitor service.

    Reads: the reply. Provides: nothing to later steps.
    """

    def __init__(self, events: ConnectionEvents) -> None:
        self.events = events

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        reply = await nxt.request(request, call)
        self.events.update(reply)
        return reply

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        try:
            await nxt.close(conn, call)
        finally:
            self.events.delete(conn)


class MonitorService(connection_pb2_grpc.MonitorConnectionServicer):
    """The MonitorConnection gRPC service over a hop's ConnectionEvents."""

    def __init__(self, events: ConnectionEvents, access: Access = AGENTS) -> None:
        self.events = events
        self.access = access

    async def MonitorConnections(  # type: ignore[override]
        self, request: MonitorScopeSelector, context: Ctx
    ) -> AsyncIterator[ConnectionEvent]:
        caller = await self.access.check(context, "MonitorConnections")
        # Over TLS a caller sees only connections whose path holds its identity (a token it
        # signed); a plaintext caller came through a local socket, which confines it itself.
        visible = None if caller is None else functools.partial(holds, identity=str(caller))
        async for event in self.events.stream(request, visible):
            yield event


def holds(conn: Connection, identity: str) -> bool:
    """Whether IDENTITY signed a token of the connection's path (it is on that path)."""
    return any(subject(seg.token) == identity for seg in conn.path.path_segments if seg.token)
