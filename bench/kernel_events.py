"""Target 8: a connection's interface deleted by someone else; how long until Monitor says so.

One node, one endpoint, one connection (no client keeper: the agent repairs on
its own). Each round deletes the client's interface over netlink from this
process and times: delete → the Monitor stream's update (the repaired
connection), and delete → the first answered ping over the rebuilt wire. The
baseline, in the same round: delete → the kernel's link event at a bare netlink
socket of our own in that namespace (what no listener can beat).
"""

from __future__ import annotations

import queue
import socket
import threading
import time

import grpc

from nsm_agent.datapath.link_events import RTMGRP_LINK, read_events
from nsm_agent.datapath.rtnl import Rtnl
from nsm_api import connection_pb2_grpc
from nsm_api.connection_pb2 import ConnectionEvent, MonitorScopeSelector, PathSegment
from nsm_client.runtime import AgentClient, kernel_request
from nsm_common.netns import inside
from nsm_common.urls import parse_address
from testbed.bed import Testbed, links, ping
from testbed.mesh import one_node


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    sock.bind((0, RTMGRP_LINK))
    return sock


def detection(bed: Testbed, rounds: int) -> dict[str, list[float]]:
    mesh = one_node(bed)
    bed.endpoint(bed.netns("ep"), "ep1", "events", "10.170.0.0/24", mesh.agent)
    pod = bed.netns("client")
    path = f"/var/run/netns/{pod}"
    client = AgentClient(parse_address(mesh.agent), timeout=10)
    conn = client.request(kernel_request(path, "events", "nsm-1"))
    peer = conn.context.ip_context.dst_ip_addrs[0].split("/")[0]
    channel = grpc.insecure_channel(parse_address(mesh.agent).grpc_target)
    stream = connection_pb2_grpc.MonitorConnectionStub(channel).MonitorConnections(
        MonitorScopeSelector(path_segments=[PathSegment(id=conn.path.path_segments[0].id)])
    )
    updates: queue.Queue[tuple[float, ConnectionEvent]] = queue.Queue()
    next(iter(stream))  # the initial state

    def pump() -> None:
        try:
            for event in stream:
                updates.put((time.monotonic(), event))
        except grpc.RpcError:
            pass

    threading.Thread(target=pump, daemon=True).start()
    rtnl = inside(path, Rtnl)
    bare = inside(path, _listener)
    bare.settimeout(0.1)
    deletions: queue.Queue[float] = queue.Queue()
    stop = threading.Event()

    def listen() -> None:  # a thread of its own: the delete's ack waits for RCU, the event does not
        while not stop.is_set():
            try:
                buf = bare.recv(1 << 16)
            except TimeoutError:
                continue
            if any(deleted for _, deleted in read_events(buf)):
                deletions.put(time.monotonic())

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    out: dict[str, list[float]] = {"monitor": [], "ping": [], "bare": []}
    try:
        for _ in range(rounds):
            assert ping(pod, peer, count=1, timeout=2)
            index = rtnl.link_index("nsm-1")
            assert index is not None
            t0 = time.monotonic()
            rtnl.delete(index)
            out["bare"].append(deletions.get(timeout=10) - t0)
            at, _ = updates.get(timeout=10)
            out["monitor"].append(at - t0)
            while not ping(pod, peer, count=1, timeout=0.2):
                if time.monotonic() - t0 > 10:
                    raise RuntimeError(f"no ping after the repair: {links(pod)}")
            out["ping"].append(time.monotonic() - t0)
            while not updates.empty():  # the rebuild's own events, if any
                updates.get()
    finally:
        rtnl.close()
        stop.set()
        reader.join(5)
        bare.close()
        stream.cancel()  # type: ignore[no-untyped-call]
        channel.close()
    client.close(client.find(conn.id) or conn)
    client.close_channel()
    return out
