"""An upstream NSM v1 client and endpoint against our registry and agent.

The client here is written only against the generated wire stubs, the way an
upstream Go client behaves: it sends its own path segment with `expires` 24 hours
ahead, names its namespace by `/proc/PID/ns/net` or `inode://DEV/INO`, refreshes
with the connection it got back, reselects with RESELECT_REQUESTED, and finds its
connection through Monitor by its segment id. The endpoint
(tests/helpers/raw_endpoint.py) registers without an expiration and answers with
`inode://`. Not covered here: upstream's passing of the namespace as a file
descriptor over the unix socket, which grpcio cannot receive (see README).
"""

from __future__ import annotations

import os
import time

import grpc
import pytest

from nsm_api import connection_pb2_grpc, networkservice_pb2_grpc, registry_pb2_grpc
from nsm_api.connection_pb2 import (
    INITIAL_STATE_TRANSFER,
    RESELECT_REQUESTED,
    Connection,
    MonitorScopeSelector,
    PathSegment,
)
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_api.registry_pb2 import NetworkServiceEndpoint, NetworkServiceEndpointQuery
from testbed.bed import Testbed, ping
from tests.helpers.mesh import ifindex, make_mesh, only_lo, raw_endpoint
from tests.helpers.upstream import upstream_request

MAX_LIFETIME = 120


def peer(conn: Connection) -> str:
    return conn.context.ip_context.dst_ip_addrs[0].split("/")[0]


def test_upstream_client_and_endpoint(bed: Testbed) -> None:
    mesh = make_mesh(bed, ["--max-lifetime", str(MAX_LIFETIME)])
    ep_pod = bed.netns("ep1")
    _, journal1 = raw_endpoint(bed, ep_pod, "raw-ep1", "upstream-svc", mesh.agent, prefix="10.71.0")
    channel = grpc.insecure_channel(mesh.agent)
    ns = networkservice_pb2_grpc.NetworkServiceStub(channel)
    monitor = connection_pb2_grpc.MonitorConnectionStub(channel)
    registry = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)

    # The endpoint asked for no expiration; the registry chose one within its maximum (30 s).
    (found,) = list(
        registry.Find(
            NetworkServiceEndpointQuery(network_service_endpoint=NetworkServiceEndpoint(name="raw-ep1")), timeout=5
        )
    )
    assert 0 < found.network_service_endpoint.expiration_time.seconds - time.time() <= 31

    # Client 1 names its namespace by PID, as the agent sees it.
    pod1 = bed.netns("c1")
    holder = bed.start("holder", ["sleep", "600"], netns=pod1)
    time.sleep(0.2)
    req = upstream_request("upstream-svc", "nsm-1", {"inodeURL": f"file:///proc/{holder.popen.pid}/ns/net"})
    client_id = req.connection.id
    asked = time.time()
    conn = ns.Request(req, timeout=15)
    assert conn.id == client_id and conn.path.index == 0
    assert [s.name for s in conn.path.path_segments] == ["upstream-client", "node1", "raw-ep1"]
    capped = conn.path.path_segments[0].expires.seconds
    assert asked + MAX_LIFETIME - 5 <= capped <= asked + MAX_LIFETIME + 1, "the agent caps the 24 h ask"
    assert conn.network_service_endpoint_name == "raw-ep1" and conn.payload in ("IP", "")
    assert conn.mechanism.type == "KERNEL" and conn.mechanism.parameters["name"] == "nsm-1"
    assert conn.state == 0
    assert ping(pod1, peer(conn), count=2)

    # Client 2 names its namespace by inode only, with no netnsInode.
    pod2 = bed.netns("c2")
    st = os.stat(f"/var/run/netns/{pod2}")
    conn2 = ns.Request(
        upstream_request("upstream-svc", "nsm-1", {"inodeURL": f"inode://{st.st_dev}/{st.st_ino}"}), timeout=15
    )
    assert ping(pod2, peer(conn2))

    # Refresh with the returned connection: same interface, same ifindex, same endpoint connection.
    index = ifindex(pod1, "nsm-1")
    refreshed = ns.Request(
        NetworkServiceRequest(connection=conn, mechanism_preferences=req.mechanism_preferences), timeout=15
    )
    assert ifindex(pod1, "nsm-1") == index
    assert refreshed.path.path_segments[2].id == conn.path.path_segments[2].id
    assert refreshed.context.ip_context.src_ip_addrs == conn.context.ip_context.src_ip_addrs
    assert journal1.read_text().count("request ") == 3 and "close" not in journal1.read_text()

    # Monitor finds the connection by the client's own segment id.
    stream = monitor.MonitorConnections(MonitorScopeSelector(path_segments=[PathSegment(id=client_id)]), timeout=10)
    event = next(iter(stream))
    stream.cancel()
    assert event.type == INITIAL_STATE_TRANSFER
    assert [c.path.path_segments[0].id for c in event.connections.values()] == [client_id]

    # Reselect: the old endpoint connection is closed, a new one chosen, same interface name.
    ep2_pod = bed.netns("ep2")
    raw_endpoint(bed, ep2_pod, "raw-ep2", "upstream-svc", mesh.agent, prefix="10.72.0")
    again = Connection()
    again.CopyFrom(refreshed)
    again.state = RESELECT_REQUESTED
    reselected = ns.Request(
        NetworkServiceRequest(connection=again, mechanism_preferences=req.mechanism_preferences), timeout=15
    )
    assert reselected.state == 0 and reselected.id == client_id
    assert "close " in journal1.read_text()
    assert reselected.mechanism.parameters["name"] == "nsm-1"
    assert ping(pod1, peer(reselected))

    # Close, and Close of what is already gone.
    ns.Close(reselected, timeout=10)
    ns.Close(conn2, timeout=10)
    ns.Close(conn2, timeout=10)
    assert only_lo(pod1) and only_lo(pod2) and only_lo(ep_pod) and only_lo(ep2_pod)
    channel.close()


def test_bad_connection_id_on_the_path_is_refused(bed: Testbed) -> None:
    mesh = make_mesh(bed)
    pod = bed.netns("c1")
    req = upstream_request("x", "nsm-1", {"inodeURL": f"file:///var/run/netns/{pod}"})
    req.connection.id = "not-the-segment-id"
    channel = grpc.insecure_channel(mesh.agent)
    with pytest.raises(grpc.RpcError) as info:
        networkservice_pb2_grpc.NetworkServiceStub(channel).Request(req, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "does not equal" in str(info.value.details())
    channel.close()
