"""What a connection between two nodes puts on the underlay, packet by packet (scapy).

VXLAN: each pod packet, unchanged, inside a VXLAN header with the agreed VNI, sent
between the nodes' tunnel addresses to the VXLAN port. WireGuard: only WireGuard
messages between the nodes' WireGuard ports; the pod's packets never show in clear.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from scapy.all import ICMP, IP, UDP, VXLAN, Raw, raw
from scapy.contrib.wireguard import Wireguard, WireguardTransport

from nsm_api.connection_pb2 import Connection
from nsm_client.runtime import kernel_request
from testbed.bed import Testbed, links, run
from testbed.cluster import Cluster
from tests.helpers.capture import capture
from tests.helpers.mesh import agent_client

PATTERN = "6e736d2d70792d77697265"  # "nsm-py-wire", repeated through each echo's payload
COUNT = 5


def connect(bed: Testbed, mechanism: str) -> tuple[Cluster, str, Connection]:
    cluster = Cluster.build(bed, nodes=2, agent_args=["--remote-mechanisms", mechanism])
    n1, n2 = cluster.nodes
    bed.endpoint(cluster.pod(n2, "ep"), "ep-1", "svc", "10.91.0.0/24", n2.agent)
    pod = cluster.pod(n1, "c1")
    conn = agent_client(n1.agent).request(kernel_request(f"/var/run/netns/{pod}", "svc", "nsm-1"))
    return cluster, pod, conn


def pings(pod: str, conn: Connection) -> None:
    far = conn.context.ip_context.dst_ip_addrs[0].split("/")[0]
    run("ip", "netns", "exec", pod, "ping", "-c", str(COUNT), "-i", "0.2", "-p", PATTERN, far)


def addresses(conn: Connection) -> tuple[str, str]:
    ip = conn.context.ip_context
    return ip.src_ip_addrs[0].split("/")[0], ip.dst_ip_addrs[0].split("/")[0]


def hop_metrics(conn: Connection) -> dict[str, str]:
    return next(dict(s.metrics) for s in conn.path.path_segments if "tunnel" in s.metrics)


def test_vxlan_carries_each_pod_packet_with_the_agreed_vni(bed: Testbed) -> None:
    cluster, pod, conn = connect(bed, "VXLAN")
    n1, n2 = cluster.nodes
    metrics = hop_metrics(conn)
    assert metrics["tunnel"] == "VXLAN"
    with capture(n1.netns, "eth0") as seen:
        pings(pod, conn)
    client, endpoint = addresses(conn)
    tunnelled = [p for p in seen if p.haslayer(VXLAN) and p[IP].src in (n1.tunnel_ip, n2.tunnel_ip)]
    requests = [p for p in tunnelled if p[VXLAN].payload.haslayer(ICMP) and p[VXLAN][ICMP].type == 8]
    replies = [p for p in tunnelled if p[VXLAN].payload.haslayer(ICMP) and p[VXLAN][ICMP].type == 0]
    assert len(requests) == COUNT and len(replies) == COUNT, [p.summary() for p in seen]
    for p in requests + replies:
        assert p[UDP].dport == 4789 and p[VXLAN].vni == int(metrics["vni"])
    for p in requests:
        outer, inner = p[IP], p[VXLAN][IP]
        assert (outer.src, outer.dst) == (n1.tunnel_ip, n2.tunnel_ip)
        assert (inner.src, inner.dst) == (client, endpoint)
        assert bytes.fromhex(PATTERN) in raw(inner[Raw])
    for p in replies:
        assert (p[IP].src, p[VXLAN][IP].src, p[VXLAN][IP].dst) == (n2.tunnel_ip, endpoint, client)


def test_wireguard_shows_the_underlay_only_ciphertext(bed: Testbed) -> None:
    cluster, pod, conn = connect(bed, "WIREGUARD")
    n1, n2 = cluster.nodes
    assert hop_metrics(conn)["tunnel"] == "WIREGUARD"
    with capture(n1.netns, "eth0") as seen:
        pings(pod, conn)
    between = [p for p in seen if p.haslayer(IP) and {p[IP].src, p[IP].dst} == {n1.tunnel_ip, n2.tunnel_ip}]
    assert between, [p.summary() for p in seen]
    transport = [p for p in between if p.haslayer(UDP) and p[UDP].dport == 51820]
    assert len(transport) >= 2 * COUNT  # every echo and every reply, each its own message
    for p in transport:
        assert p.haslayer(Wireguard) and p.haslayer(WireguardTransport), p.summary()
    clear = bytes.fromhex(PATTERN)  # found in each VXLAN packet by the test above
    assert not any(clear in raw(p) for p in seen)
    assert not any(p.haslayer(ICMP) or p.haslayer(VXLAN) for p in between)
    inner = set(addresses(conn))  # the pods' own addresses never show on the underlay
    assert not any(p.haslayer(IP) and {p[IP].src, p[IP].dst} & inner for p in seen)


POLICY = Path(__file__).resolve().parents[2] / "docs" / "policies" / "require-wireguard.rego"


def secret_service(bed: Testbed, offered: str) -> tuple[str, str]:
    """Two nodes whose agents offer OFFERED between them, under the policy; the client's pod
    and the agent's URL."""
    cluster = Cluster.build(bed, nodes=2, agent_args=["--remote-mechanisms", offered, "--policy", str(POLICY)])
    n1, n2 = cluster.nodes
    bed.endpoint(cluster.pod(n2, "ep"), "ep-1", "secret", "10.92.0.0/24", n2.agent)
    return cluster.pod(n1, "c1"), n1.agent


def test_a_policy_can_refuse_vxlan_for_a_service(bed: Testbed) -> None:
    """docs/policies/require-wireguard.rego on the agents: "secret" over VXLAN is refused with a
    message naming the policy, and nothing is left behind."""
    pod, agent = secret_service(bed, "VXLAN,WIREGUARD")
    with pytest.raises(grpc.RpcError) as info:
        agent_client(agent).request(kernel_request(f"/var/run/netns/{pod}", "secret", "nsm-1"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert f"policy {POLICY} denies this" in str(info.value.details())  # type: ignore[attr-defined]
    assert links(pod) == ["lo"]


def test_the_same_policy_serves_the_service_over_wireguard(bed: Testbed) -> None:
    pod, agent = secret_service(bed, "WIREGUARD,VXLAN")
    conn = agent_client(agent).request(kernel_request(f"/var/run/netns/{pod}", "secret", "nsm-1"))
    assert hop_metrics(conn)["tunnel"] == "WIREGUARD"
    pings(pod, conn)
