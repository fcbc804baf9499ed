"""The keeper refreshes for the lifetime its request asked, not a fixed one (in process, no root).

A fake agent (a real gRPC server on a unix socket) records each Request; the
Monitor stream stays open and quiet. No addresses come back, so nothing is probed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from google.protobuf.empty_pb2 import Empty

from nsm_api import connection_pb2_grpc, networkservice_pb2_grpc
from nsm_api.connection_pb2 import Connection, ConnectionEvent, MonitorScopeSelector
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_client.keeper import Keeper
from nsm_client.runtime import kernel_request
from nsm_common.timeutil import now, ts_seconds
from nsm_common.urls import parse_address


class FakeAgent(networkservice_pb2_grpc.NetworkServiceServicer, connection_pb2_grpc.MonitorConnectionServicer):
    def __init__(self) -> None:
        self.asked: list[tuple[float, float]] = []  # (when, the client segment's expires)
        self.closed = 0

    async def Request(self, request: NetworkServiceRequest, context: object) -> Connection:  # type: ignore[override]
        self.asked.append((now(), ts_seconds(request.connection.path.path_segments[0].expires)))
        reply = Connection()
        reply.CopyFrom(request.connection)
        return reply

    async def Close(self, request: Connection, context: object) -> Empty:  # type: ignore[override]
        self.closed += 1
        return Empty()

    async def MonitorConnections(  # type: ignore[override]
        self, request: MonitorScopeSelector, context: object
    ) -> AsyncIterator[ConnectionEvent]:
        yield ConnectionEvent()
        await asyncio.Event().wait()


async def test_refreshes_ask_for_the_requested_lifetime_again(tmp_path: Path) -> None:
    agent = FakeAgent()
    server = grpc.aio.server()
    networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(agent, server)
    connection_pb2_grpc.add_MonitorConnectionServicer_to_server(agent, server)
    url = f"unix://{tmp_path}/agent.sock"
    server.add_insecure_port(url)
    await server.start()
    try:
        request = kernel_request("/proc/self/ns/net", "svc", "nsm-1", lifetime=3.0)
        keeper = Keeper(parse_address(url), request, "/proc/self/ns/net", timeout=5)
        assert abs(keeper.lifetime - 3.0) < 0.5
        stop = asyncio.Event()
        running = asyncio.create_task(keeper.run(stop))
        deadline = asyncio.get_running_loop().time() + 10
        while len(agent.asked) < 3 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await running
    finally:
        await server.stop(None)
    assert len(agent.asked) >= 3  # the first Request and two refreshes, at about a third of 3 s
    for when, expires in agent.asked[1:]:
        assert 2.0 <= expires - when <= 3.5, (when, expires)  # not 600 s
    assert agent.closed == 1
