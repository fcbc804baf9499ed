"""The NetworkService and MonitorConnection services of one pod's socket: the node's own,
behind the pod's confinement (`scope`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.empty_pb2 import Empty

from nsm_agent.netns.resolve import NetnsRef, NetnsResolver
from nsm_agent.netns.spec import parse_netns
from nsm_agent.pods.scope import client_inode, connection_refusal, request_refusal
from nsm_api import connection_pb2_grpc, networkservice_pb2_grpc
from nsm_api.connection_pb2 import INITIAL_STATE_TRANSFER, Connection, ConnectionEvent, MonitorScopeSelector
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.monitor import ConnectionEvents
from nsm_common.chain.server import NetworkServiceServer
from nsm_common.errors import NsmError
from nsm_common.grpcutil import Ctx


class PodNetworkService(networkservice_pb2_grpc.NetworkServiceServicer):
    """Requests that name the pod's own namespace, Closes of the pod's own connections."""

    def __init__(self, name: str, pod: NetnsRef, node: NetworkServiceServer, events: ConnectionEvents,
                 resolver: NetnsResolver) -> None:  # fmt: skip
        self.name = name
        self.pod = pod
        self.node = node
        self.events = events
        self.resolver = resolver

    def _named(self, request: NetworkServiceRequest) -> int | None:
        kernel = [m for m in request.mechanism_preferences if m.type == "KERNEL"]
        if not kernel:
            return None
        return self.resolver.resolve(parse_netns(kernel[0].parameters)).ino

    async def Request(self, request: NetworkServiceRequest, context: Ctx) -> Connection:  # type: ignore[override]
        try:
            named = self._named(request)
        except NsmError as exc:
            await context.abort(exc.code, exc.message)
        held = self.events.find(request.connection.id)
        why = request_refusal(self.name, self.pod.ino, request, named, held)
        if why is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
        return await self.node.Request(request, context)

    async def Close(self, request: Connection, context: Ctx) -> Empty:  # type: ignore[override]
        why = connection_refusal(self.name, self.pod.ino, self.events.find(request.id))
        if why is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
        return await self.node.Close(request, context)


class PodMonitorService(connection_pb2_grpc.MonitorConnectionServicer):
    """The pod's own connections only."""

    def __init__(self, pod: NetnsRef, events: ConnectionEvents) -> None:
        self.pod = pod
        self.events = events

    async def MonitorConnections(  # type: ignore[override]
        self, request: MonitorScopeSelector, context: Ctx
    ) -> AsyncIterator[ConnectionEvent]:
        async for event in self.events.stream(request):
            mine = ConnectionEvent(type=event.type)
            for cid, conn in event.connections.items():
                if client_inode(conn) == self.pod.ino:
                    mine.connections[cid].CopyFrom(conn)
            if mine.connections or event.type == INITIAL_STATE_TRANSFER:  # the first always goes
                yield mine
