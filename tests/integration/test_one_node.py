"""The one-node mesh in real namespaces: connect, ping, refresh, monitor, close, no leftovers."""

from __future__ import annotations

import grpc
import pytest

from nsm_api import registry_pb2_grpc
from nsm_api.connection_pb2 import DELETE, INITIAL_STATE_TRANSFER, MonitorScopeSelector, PathSegment
from nsm_api.registry_pb2 import NetworkServiceEndpoint, NetworkServiceEndpointQuery
from nsm_client.runtime import kernel_request
from nsm_common.identity.transport import LOCAL_ONLY
from nsm_common.urls import parse_address
from testbed.bed import addresses, links, ping
from testbed.mesh import Mesh
from tests.helpers.mesh import agent_client, ifindex, only_lo


def registry_endpoints(url: str) -> list[str]:
    channel = LOCAL_ONLY.sync_channel(parse_address(url))
    try:
        stub = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)
        return sorted(r.network_service_endpoint.name for r in stub.Find(NetworkServiceEndpointQuery(), timeout=5))
    finally:
        channel.close()


def test_two_clients_connect_ping_close_and_leave_nothing(mesh: Mesh) -> None:
    bed = mesh.bed
    ep_pod = bed.netns("ep")
    # A /29 holds four point-to-point pairs (all its addresses, as upstream's): enough to prove
    # leases come back.
    bed.endpoint(ep_pod, "ep1", "web", "10.61.0.0/29", mesh.agent)
    before = registry_endpoints(mesh.registry)
    assert before == ["ep1"]
    pods = [bed.netns("c1"), bed.netns("c2")]
    client = agent_client(mesh.agent)
    conns = []
    for pod in pods:
        conn = client.request(kernel_request(f"/var/run/netns/{pod}", "web", "nsm-1"))
        assert conn.network_service_endpoint_name == "ep1"
        assert conn.mechanism.type == "KERNEL" and conn.mechanism.parameters["name"] == "nsm-1"
        assert conn.path.index == 0 and conn.id == conn.path.path_segments[0].id
        assert [s.name for s in conn.path.path_segments] == ["nsmctl", "node1", "ep1"]
        assert "nsm-1" in links(pod)
        assert conn.context.ip_context.src_ip_addrs[0] in addresses(pod)
        conns.append(conn)
    for pod, conn in zip(pods, conns, strict=True):
        peer = conn.context.ip_context.dst_ip_addrs[0].split("/")[0]
        assert ping(pod, peer, count=2)
    assert len(client.connections()) == 2
    for conn in conns:
        client.close(conn)
    assert all(only_lo(p) for p in [*pods, ep_pod])
    assert client.connections() == {}
    assert registry_endpoints(mesh.registry) == before
    # The pool is whole again: four more connections fit, a fifth does not.
    more = [bed.netns(f"d{i}") for i in range(5)]
    for pod in more[:4]:
        client.request(kernel_request(f"/var/run/netns/{pod}", "web", "nsm-1"))
    with pytest.raises(grpc.RpcError) as info:
        client.request(kernel_request(f"/var/run/netns/{more[4]}", "web", "nsm-1"))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "10.61.0.0/29" in str(info.value.details())
    assert only_lo(more[4])
    client.close_channel()


def test_refresh_keeps_the_wire_and_close_of_unknown_succeeds(mesh: Mesh) -> None:
    bed = mesh.bed
    ep_pod = bed.netns("ep")
    bed.endpoint(ep_pod, "ep1", "web", "10.62.0.0/24", mesh.agent)
    pod = bed.netns("c1")
    client = agent_client(mesh.agent)
    req = kernel_request(f"/var/run/netns/{pod}", "web", "nsm-1")
    first = client.request(req)
    index = ifindex(pod, "nsm-1")
    req.connection.CopyFrom(first)
    again = client.request(req)
    assert ifindex(pod, "nsm-1") == index
    assert again.context.ip_context.src_ip_addrs == first.context.ip_context.src_ip_addrs
    assert again.path.path_segments[1].id == first.path.path_segments[1].id
    assert len(client.connections()) == 1
    assert ping(pod, first.context.ip_context.dst_ip_addrs[0].split("/")[0])
    client.close(again)
    client.close(again)  # unknown by now: still fine
    assert only_lo(pod) and only_lo(ep_pod)
    client.close_channel()


def test_monitor_initial_state_then_delete(mesh: Mesh) -> None:
    bed = mesh.bed
    bed.endpoint(bed.netns("ep"), "ep1", "web", "10.63.0.0/24", mesh.agent)
    pod = bed.netns("c1")
    client = agent_client(mesh.agent)
    conn = client.request(kernel_request(f"/var/run/netns/{pod}", "web", "nsm-1"))
    selector = MonitorScopeSelector(path_segments=[PathSegment(id=conn.id)])
    stream = client.monitor.MonitorConnections(selector, timeout=20)
    first = next(iter(stream))
    assert first.type == INITIAL_STATE_TRANSFER
    (seen,) = first.connections.values()
    assert seen.path.path_segments[0].id == conn.id
    other = MonitorScopeSelector(network_services=["db"])
    assert client.connections(other) == {}
    client.close(conn)
    event = next(iter(stream))
    assert event.type == DELETE
    assert next(iter(event.connections.values())).path.path_segments[0].id == conn.id
    stream.cancel()
    client.close_channel()


def test_cli_connect_get_close(mesh: Mesh) -> None:
    bed = mesh.bed
    bed.endpoint(bed.netns("ep"), "ep1", "web", "10.64.0.0/24", mesh.agent)
    pod = bed.netns("c1")
    out = bed.nsmctl("connect", "--agent", mesh.agent, "--netns", pod, "--service", "web", "--ifname", "nsm-7")
    assert out.stdout.startswith("connected ") and "nsm-7" in out.stdout
    conn_id = out.stdout.split()[1].rstrip(":")
    table = bed.nsmctl("get", "connections", "--agent", mesh.agent).stdout
    assert conn_id in table and "nsm-7" in table
    assert "ep1" in bed.nsmctl("get", "endpoints", "--agent", mesh.agent).stdout
    assert "web" in bed.nsmctl("get", "services", "--agent", mesh.agent, "-o", "json").stdout
    bed.nsmctl("close", conn_id, "--agent", mesh.agent)
    assert only_lo(pod)
    again = bed.nsmctl("close", conn_id, "--agent", mesh.agent, check=False)
    assert again.returncode == 2 and "no connection" in again.stderr


def test_endpoint_registers_through_the_agent_and_unregisters_on_exit(mesh: Mesh) -> None:
    bed = mesh.bed
    proc, _ = bed.endpoint(bed.netns("ep"), "ep1", "web", "10.65.0.0/24", mesh.agent)
    channel = LOCAL_ONLY.sync_channel(parse_address(mesh.agent))
    stub = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)
    via_agent = [r.network_service_endpoint.name for r in stub.Find(NetworkServiceEndpointQuery(), timeout=5)]
    assert via_agent == ["ep1"]
    found = list(
        stub.Find(NetworkServiceEndpointQuery(network_service_endpoint=NetworkServiceEndpoint(name="ep1")), timeout=5)
    )
    assert found[0].network_service_endpoint.url.startswith("unix://")
    proc.stop()
    assert registry_endpoints(mesh.registry) == []
    channel.close()
