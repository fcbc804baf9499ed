"""Bad REMOTE mechanisms, unreachable agents, broken WireGuard, taken VNIs:
a clear error, the next candidate where there is one, nothing left on any node."""

from __future__ import annotations

import base64
import uuid

import grpc
import pytest

from nsm_api import networkservice_pb2_grpc, registry_pb2_grpc
from nsm_api.connection_pb2 import Connection, Mechanism, Path, PathSegment
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_api.registry_pb2 import NetworkServiceEndpoint
from nsm_client.runtime import kernel_request
from nsm_common.identity.transport import LOCAL_ONLY
from nsm_common.urls import parse_address
from testbed.bed import Testbed, links, run
from testbed.cluster import Cluster
from tests.helpers.mesh import agent_client, only_lo

KEY = base64.b64encode(bytes(range(32))).decode()


def agent_request(mech: Mechanism, service: str = "svc", endpoint: str = "ep1") -> NetworkServiceRequest:
    """A Request as another node's agent would send it."""
    cid = str(uuid.uuid4())
    return NetworkServiceRequest(
        connection=Connection(
            id=cid,
            network_service=service,
            network_service_endpoint_name=endpoint,
            path=Path(index=0, path_segments=[PathSegment(name="other-agent", id=cid)]),
        ),
        mechanism_preferences=[mech],
    )


@pytest.fixture
def two(bed: Testbed) -> tuple[Cluster, str]:
    cluster = Cluster.build(bed, nodes=2)
    ep_pod = cluster.pod(cluster.nodes[1], "ep")
    bed.endpoint(ep_pod, "ep1", "svc", "10.83.0.0/24", cluster.nodes[1].agent)
    return cluster, ep_pod


@pytest.mark.parametrize(
    ("kind", "params", "words"),
    [
        ("VXLAN", {}, "src_ip is missing"),
        ("VXLAN", {"src_ip": "192.0.2.300"}, "not an IP address"),
        ("VXLAN", {"src_ip": "192.0.2.1", "vni": "16777216"}, "vni"),
        ("VXLAN", {"src_ip": "192.0.2.1", "src_port": "0"}, "src_port"),
        ("VXLAN", {"src_ip": "2001:db8::1"}, "different families"),
        ("WIREGUARD", {"src_ip": "192.0.2.1", "src_public_key": "c2hvcnQ="}, "5 bytes"),
        ("WIREGUARD", {"src_ip": "192.0.2.1"}, "src_public_key is missing"),
        ("GRE", {"src_ip": "192.0.2.1"}, "'GRE' is not supported"),
    ],
)
def test_malformed_remote_mechanism(two: tuple[Cluster, str], kind: str, params: dict[str, str], words: str) -> None:
    cluster, ep_pod = two
    node2 = cluster.nodes[1]
    before = links(node2.netns)
    client = agent_client(node2.agent)
    with pytest.raises(grpc.RpcError) as info:
        client.request(agent_request(Mechanism(cls="REMOTE", type=kind, parameters=params)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in str(info.value.details())
    assert links(node2.netns) == before and only_lo(ep_pod)
    assert client.connections() == {}


def test_taken_vni_is_avoided_and_left_alone(two: tuple[Cluster, str]) -> None:
    cluster, ep_pod = two
    node2 = cluster.nodes[1]
    run("ip", "-n", node2.netns, "link", "add", "othercni", "type", "vxlan", "id", "777777", "dstport", "4789",
        "local", node2.tunnel_ip)  # fmt: skip
    mech = Mechanism(cls="REMOTE", type="VXLAN", parameters={"src_ip": "192.0.2.1", "vni": "777777"})
    client = agent_client(node2.agent)
    conn = client.request(agent_request(mech))
    assert conn.mechanism.parameters["vni"] != "777777"
    assert conn.mechanism.parameters["dst_ip"] == node2.tunnel_ip
    assert "othercni" in links(node2.netns)
    client.close(conn)
    assert only_lo(ep_pod) and "othercni" in links(node2.netns)


def test_unreachable_remote_agent_falls_back_to_the_next_endpoint(two: tuple[Cluster, str]) -> None:
    cluster, ep_pod = two
    node1 = cluster.nodes[0]
    channel = LOCAL_ONLY.sync_channel(parse_address(cluster.registry))
    registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel).Register(
        NetworkServiceEndpoint(name="ghost", network_service_names=["svc"], url="tcp://192.0.2.99:5001"), timeout=5
    )
    channel.close()
    client = agent_client(node1.agent, timeout=30)
    pods = [cluster.pod(node1, f"c{i}") for i in range(2)]
    for pod in pods:  # round robin puts the ghost first once
        conn = client.request(kernel_request(f"/var/run/netns/{pod}", "svc", "nsm-1"))
        assert conn.network_service_endpoint_name == "ep1"
        client.close(conn)
    assert all(only_lo(p) for p in pods) and only_lo(ep_pod)
    assert links(node1.netns) == ["lo", "eth0"]


def test_wireguard_go_that_fails_to_start(bed: Testbed) -> None:
    cluster = Cluster.build(bed, nodes=1, agent_args=["--remote-mechanisms", "WIREGUARD"])
    node2 = cluster.add_node(2, ["--wireguard-go", "/bin/false"])
    node1 = cluster.nodes[0]
    ep_pod = cluster.pod(node2, "ep")
    bed.endpoint(ep_pod, "ep1", "svc", "10.84.0.0/24", node2.agent)
    pod = cluster.pod(node1, "c1")
    client = agent_client(node1.agent)
    with pytest.raises(grpc.RpcError) as info:
        client.request(kernel_request(f"/var/run/netns/{pod}", "svc", "nsm-1"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "/bin/false" in str(info.value.details())
    assert only_lo(pod) and only_lo(ep_pod)
    assert links(node1.netns) == ["lo", "eth0"] and links(node2.netns) == ["lo", "eth0"]
    assert client.connections() == {} and agent_client(node2.agent).connections() == {}


def test_remote_request_without_endpoint_name_through_agent_socket(two: tuple[Cluster, str]) -> None:
    """A REMOTE offer that lets the endpoint's agent select still works (and is cleaned up)."""
    cluster, ep_pod = two
    node2 = cluster.nodes[1]
    req = agent_request(Mechanism(cls="REMOTE", type="VXLAN", parameters={"src_ip": "192.0.2.1"}), endpoint="")
    stub = networkservice_pb2_grpc.NetworkServiceStub(LOCAL_ONLY.sync_channel(parse_address(node2.agent)))
    conn = stub.Request(req, timeout=15)
    assert conn.network_service_endpoint_name == "ep1" and conn.mechanism.type == "VXLAN"
    assert len(links(ep_pod)) == 2
    stub.Close(conn, timeout=15)
    assert only_lo(ep_pod)
