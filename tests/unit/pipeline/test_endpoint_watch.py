"""EndpointWatch: a local endpoint's socket gone past the grace marks its connections DOWN
(a real gRPC server on a unix socket, in process)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from nsm_agent.pipeline.endpoint_watch import EndpointWatch
from nsm_common.identity.transport import LOCAL_ONLY
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
