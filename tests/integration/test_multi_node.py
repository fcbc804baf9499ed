"""Pods on different nodes, over VXLAN: each payload, each address family, both underlays."""

from __future__ import annotations

import ipaddress
import os
import time

import pytest

from nsm_api.connection_pb2 import Connection
from nsm_client.runtime import kernel_request
from testbed.bed import Testbed, links, ping, ping_df, run
from testbed.cluster import Cluster
from tests.helpers.mesh import agent_client, only_lo

POOLS = {"v4": ["10.81.0.0/24"], "v6": ["fd00:81::/64"], "dual": ["10.81.0.0/24", "fd00:81::/64"]}


@pytest.fixture(params=["VXLAN", "WIREGUARD"])
def mechanism(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=[4, 6], ids=["v4-underlay", "v6-underlay"])
def cluster(bed: Testbed, request: pytest.FixtureRequest, mechanism: str) -> Cluster:
    return Cluster.build(bed, nodes=2, family=request.param, agent_args=["--remote-mechanisms", mechanism])


# Outer headers: VXLAN straight over the underlay; WireGuard over the underlay
# carrying VXLAN between the nodes' IPv6 inner addresses.
OVERHEAD = {("VXLAN", 4): 50, ("VXLAN", 6): 70, ("WIREGUARD", 4): 60 + 70, ("WIREGUARD", 6): 80 + 70}


def node_links(cluster: Cluster) -> dict[str, list[str]]:
    return {n.name: sorted(links(n.netns)) for n in cluster.nodes}


def peers(conn: Connection) -> list[str]:
    return [a.split("/")[0] for a in conn.context.ip_context.dst_ip_addrs]


@pytest.mark.parametrize("payload", ["IP", "ETHERNET"])
@pytest.mark.parametrize("pools", sorted(POOLS))
def test_across_nodes(cluster: Cluster, mechanism: str, payload: str, pools: str) -> None:
    bed = cluster.bed
    n1, n2 = cluster.nodes
    before = node_links(cluster)
    ep_pod = cluster.pod(n2, "ep")
    extra = ["--payload", payload]
    for cidr in POOLS[pools][1:]:
        extra += ["--cidr", cidr]
    bed.endpoint(ep_pod, "ep1", "svc", POOLS[pools][0], n2.agent, extra=extra)
    pod = cluster.pod(n1, "c1")
    client = agent_client(n1.agent)
    conn = client.request(kernel_request(f"/var/run/netns/{pod}", "svc", "nsm-1"))
    assert conn.payload == payload
    assert [s.name for s in conn.path.path_segments] == ["nsmctl", "node1", "node2", "ep1"]
    assert conn.path.path_segments[1].metrics["tunnel"] == mechanism
    vni = int(conn.path.path_segments[1].metrics["vni"])
    assert conn.path.path_segments[2].metrics["vni"] == str(vni)
    overhead = OVERHEAD[(mechanism, cluster.family)]
    assert cluster.mtu - overhead == conn.context.MTU
    assert run("ip", "-n", pod, "-o", "link", "show", "nsm-1").stdout.count(f"mtu {conn.context.MTU} ") == 1
    assert len(peers(conn)) == len(POOLS[pools])
    for peer in peers(conn):
        assert ping(pod, peer, count=2), f"no answer from {peer}"
        # Exactly the MTU crosses with DF set; one byte more is refused, not dropped.
        header = 28 if ipaddress.ip_address(peer).version == 4 else 48
        ok, out = ping_df(pod, peer, conn.context.MTU - header)
        assert ok, out
        ok, out = ping_df(pod, peer, conn.context.MTU - header + 1)
        assert not ok and ("message too long" in out.lower() or "frag needed" in out.lower()), out
    # One Ethernet segment: the client has learnt the endpoint's MAC (ARP or ND).
    neigh = run("ip", "-n", pod, "neigh", "show", "dev", "nsm-1").stdout.lower()
    assert conn.context.ethernet_context.dst_mac.lower() in neigh
    assert conn.context.ethernet_context.src_mac
    wg_devices = [d for n in cluster.nodes for d in links(n.netns) if d.startswith("nsmwg")]
    assert len(wg_devices) == (2 if mechanism == "WIREGUARD" else 0)
    client.close(conn)
    assert only_lo(pod) and only_lo(ep_pod)
    assert node_links(cluster) == before  # for WireGuard: the device went with its last connection
    for device in wg_devices:  # wireguard-go's control socket went with its device
        assert not os.path.exists(f"/var/run/wireguard/{device}.sock")
    assert client.connections() == {} and agent_client(n2.agent).connections() == {}
    client.close_channel()


@pytest.mark.parametrize("mechanism", ["VXLAN", "WIREGUARD"])
def test_a_hundred_connections_between_two_nodes(bed: Testbed, mechanism: str) -> None:
    cluster = Cluster.build(bed, nodes=2, agent_args=["--remote-mechanisms", mechanism])
    n1, n2 = cluster.nodes
    ep_pod = cluster.pod(n2, "ep")
    bed.endpoint(ep_pod, "ep1", "svc", "10.82.0.0/16", n2.agent)
    pods = [cluster.pod(n1, f"c{i}") for i in range(10)]
    client = agent_client(n1.agent)
    conns = []
    start = time.monotonic()
    for i in range(100):
        pod = pods[i % 10]
        conns.append((pod, client.request(kernel_request(f"/var/run/netns/{pod}", "svc", f"nsm-{i // 10}"))))
    took = time.monotonic() - start
    vnis = {c.path.path_segments[1].metrics["vni"] for _, c in conns}
    assert len(vnis) == 100
    assert {c.path.path_segments[1].metrics["tunnel"] for _, c in conns} == {mechanism}
    wg_devices = [n for n in links(n1.netns) if n.startswith("nsmwg")]
    assert len(wg_devices) == (1 if mechanism == "WIREGUARD" else 0)  # one device per node, whatever the count
    assert len(links(ep_pod)) == 101
    for pod, conn in conns[::9]:
        assert ping(pod, peers(conn)[0])
    for _, conn in conns:
        client.close(conn)
    assert only_lo(ep_pod) and all(only_lo(p) for p in pods)
    assert client.connections() == {}
    assert not [n for n in links(n1.netns) if n.startswith("nsmwg")]
    print(f"100 cross-node {mechanism} connections set up in {took:.1f}s")
    client.close_channel()


@pytest.mark.parametrize("mechanism", ["VXLAN", "WIREGUARD"])
def test_refresh_across_nodes_keeps_vni_and_interface(bed: Testbed, mechanism: str) -> None:
    cluster = Cluster.build(bed, nodes=2, agent_args=["--remote-mechanisms", mechanism])
    n1, n2 = cluster.nodes
    ep_pod = cluster.pod(n2, "ep")
    bed.endpoint(ep_pod, "ep1", "svc", "10.86.0.0/24", n2.agent)
    pod = cluster.pod(n1, "c1")
    client = agent_client(n1.agent)
    req = kernel_request(f"/var/run/netns/{pod}", "svc", "nsm-1")
    first = client.request(req)
    index = run("ip", "-n", pod, "-o", "link", "show", "nsm-1").stdout.split(":")[0]
    ep_links = links(ep_pod)
    req.connection.CopyFrom(first)
    again = client.request(req)
    assert again.path.path_segments[1].metrics["vni"] == first.path.path_segments[1].metrics["vni"]
    assert run("ip", "-n", pod, "-o", "link", "show", "nsm-1").stdout.split(":")[0] == index
    assert links(ep_pod) == ep_links
    assert ping(pod, peers(again)[0])
    client.close(again)
    assert only_lo(pod) and only_lo(ep_pod)


def test_overlapping_ranges_both_ways_over_one_wireguard_pair(bed: Testbed) -> None:
    """Endpoints on both nodes hand out the same range; clients on each node reach the other node's."""
    cluster = Cluster.build(bed, nodes=2, agent_args=["--remote-mechanisms", "WIREGUARD"])
    n1, n2 = cluster.nodes
    bed.endpoint(cluster.pod(n1, "ep"), "ep-a", "svc-a", "10.90.0.0/24", n1.agent)
    bed.endpoint(cluster.pod(n2, "ep"), "ep-b", "svc-b", "10.90.0.0/24", n2.agent)
    c1, c2 = cluster.pod(n1, "c"), cluster.pod(n2, "c")
    conn1 = agent_client(n1.agent).request(kernel_request(f"/var/run/netns/{c1}", "svc-b", "nsm-1"))
    conn2 = agent_client(n2.agent).request(kernel_request(f"/var/run/netns/{c2}", "svc-a", "nsm-1"))
    assert conn1.context.ip_context.src_ip_addrs == conn2.context.ip_context.src_ip_addrs  # the same addresses
    assert ping(c1, peers(conn1)[0]) and ping(c2, peers(conn2)[0])
    for node in (n1, n2):
        assert len([n for n in links(node.netns) if n.startswith("nsmwg")]) == 1
    agent_client(n1.agent).close(conn1)
    agent_client(n2.agent).close(conn2)
    assert only_lo(c1) and only_lo(c2)
    assert sorted(links(n1.netns)) == ["eth0", "lo"] and sorted(links(n2.netns)) == ["eth0", "lo"]
