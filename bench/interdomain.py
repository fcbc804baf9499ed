"""Interdomain set-up and throughput: a pod of cluster1 to `svc@cluster2` (two clusters of the
same private range behind routers with 1:1 NAT, testbed/clusters.py), against the same
shape built by hand between the same two nodes: wireguard-go keyed and peered over the
public addresses, and a VXLAN pair between pods inside it. What the mesh adds on top is its
registries (the far one asked through the near one) and the two agents' chains."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench import local_setup
from bench.remote_setup import WG_MTU, by_hand, wireguard_pair
from bench.throughput import hand_vxlan, iperf
from nsm_client.runtime import AgentClient, kernel_request
from nsm_common.urls import parse_address
from testbed.bed import Testbed
from testbed.cluster import Node
from testbed.clusters import DomainNode, Federation

POOL = "10.140.0.0/16"


@dataclass
class Pair:
    """Node 1 of cluster1 and node 1 of cluster2 as the hand-built baseline sees them: tunnel
    ends at their public addresses."""

    fed: Federation
    nodes: list[Node] = field(default_factory=list)

    @classmethod
    def of(cls, fed: Federation) -> Pair:
        ends = [fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes[0]]
        return cls(fed, [Node(n.name, n.netns, n.public_ip, n.agent) for n in ends])

    def pod(self, node: Node, short: str) -> str:
        return self.fed.bed.netns(f"{node.name}-{short}")


def _build(bed: Testbed) -> tuple[Federation, DomainNode, DomainNode]:
    fed = Federation.build(bed, clusters=2, nodes=1, agent_args=["--remote-mechanisms", "WIREGUARD"])
    return fed, fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes[0]


def setup(bed: Testbed, n: int) -> dict[str, object]:
    """N+1 connections to svc@cluster2 (the first brings the node pair's WireGuard link up),
    then the same by hand."""
    out: dict[str, object] = {}
    with Testbed(prefix=bed.prefix + "m") as sub:
        fed, here, there = _build(sub)
        sub.endpoint(fed.pod(there, "ep"), "ep-x", "svc", POOL, there.agent)
        pods = [fed.pod(here, f"r{i}") for i in range(n + 1)]
        client = AgentClient(parse_address(here.agent), timeout=30)
        took, conns = local_setup.connect_all(client, pods, "svc@cluster2")
        out.update(mesh_first_s=took[0], mesh_setup=took[1:], mesh_close=local_setup.close_all(client, conns))
        client.close_channel()
    with Testbed(prefix=bed.prefix + "h") as sub:
        fed, _, _ = _build(sub)
        pair = Pair.of(fed)
        link = wireguard_pair(sub, pair.nodes)
        made, closed = by_hand(sub, pair, n, link.inner, "hx")
        out.update(hand_first_s=link.took, hand_setup=made, hand_close=closed)
    return out


def throughput(bed: Testbed, seconds: int) -> dict[str, float]:
    """iperf3 from a pod of cluster1 to the endpoint's pod in cluster2, against a VXLAN inside
    a hand-built WireGuard link between the same two nodes (the mesh's shape)."""
    fed, here, there = _build(bed)
    ep, pod = fed.pod(there, "ep"), fed.pod(here, "c")
    bed.endpoint(ep, "tp-x", "tp", POOL, there.agent)
    conn = AgentClient(parse_address(here.agent)).request(
        kernel_request(f"/var/run/netns/{pod}", "tp@cluster2", "nsm-1")
    )
    mesh = iperf(bed, pod, ep, conn.context.ip_context.dst_ip_addrs[0].split("/")[0], seconds)
    pair = Pair.of(fed)
    link = wireguard_pair(bed, pair.nodes)
    time.sleep(0.2)
    hand = iperf(bed, here.netns, there.netns, hand_vxlan(pair, link.inner, WG_MTU - 70, "10.141.0"), seconds)
    return {"mesh_gbps": mesh, "baseline_gbps": hand, "ratio": mesh / hand}
