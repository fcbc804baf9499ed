"""EndpointWatch: a local endpoint's socket gone past the grace marks its connections DOWN;
PeerWatch: what another agent's Monitor reports of ours (real gRPC servers on unix
sockets, in process)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from nsm_agent.pipeline.endpoint_watch import EndpointWatch, PeerWatch
from nsm_api import connection_pb2_grpc
from nsm_api.connection_pb2 import UP, Connection
from nsm_common.chain.monitor import ConnectionEvents, MonitorService
from nsm_common.identity.transport import LOCAL_ONLY, Access
from nsm_common.urls import parse_address


async def test_a_gone_endpoint_marks_its_connections_down_and_a_forgotten_one_does_not(tmp_path: Path) -> None:
    downs: list[list[str]] = []
    url = f"unix://{tmp_path}/ep.sock"
    server = grpc.aio.server()
    server.add_insecure_port(url)
    await server.start()
    channel = LOCAL_ONLY.aio_channel(parse_address(url))
    await channel.channel_ready()
    watch = EndpointWatch(downs.append, grace=0.1)
    watch.watch(url, "c1", channel)
    watch.watch(url, "c2", channel)
    watch.forget(url, "c2")
    watch.watch("tcp://192.0.2.2:5001", "c3", channel)  # behind another agent: left to the probes
    await server.stop(None)
    for _ in range(100):
        if downs:
            break
        await asyncio.sleep(0.05)
    assert downs and downs[0] == ["c1"]
    watch.forget(url, "c1")
    await watch.aclose()
    await channel.close(None)


async def test_peer_watch_passes_on_what_the_next_agent_reports_down_or_deletes(tmp_path: Path) -> None:
    """The next hop's Monitor (a real MonitorService over a unix socket, in process): its
    initial state is not news; a DOWN or a DELETE of a connection of ours is; one forgotten
    before our Close is not."""
    events = ConnectionEvents()
    theirs = [Connection(id=f"far-{i}", state=UP) for i in range(4)]
    for conn in theirs:
        events.update(conn)
    events.mark_down(["far-3"])  # DOWN already (an agent carrying it on after a restart, say)
    server = grpc.aio.server()
    connection_pb2_grpc.add_MonitorConnectionServicer_to_server(MonitorService(events, Access()), server)
    url = f"unix://{tmp_path}/agent.sock"
    server.add_insecure_port(url)
    await server.start()
    channel = LOCAL_ONLY.aio_channel(parse_address(url))
    downs: list[list[str]] = []
    peers = PeerWatch(downs.append, backoff=0.05)
    far = "tcp://192.0.2.2:5001"  # what the registry says; the channel is the test's
    for i in range(4):
        peers.watch(far, f"ours-{i}", f"far-{i}", lambda: channel)
    peers.watch(f"unix://{tmp_path}/ep.sock", "local", "x", lambda: channel)  # a local endpoint: EndpointWatch's
    await asyncio.sleep(0.3)
    assert downs == []  # the initial state is what was: nothing to pass on
    events.mark_down(["far-0"])
    peers.forget(far, "ours-2")
    events.delete(theirs[2])  # our own Close: forgotten first
    events.delete(theirs[1])
    for _ in range(100):
        if len(downs) >= 2:
            break
        await asyncio.sleep(0.02)
    assert downs == [["ours-0"], ["ours-1"]]
    await peers.aclose()
    await server.stop(None)
    await channel.close(None)
