"""Through NAT with no port forwarded for the tunnels (testbed/clusters.py, NAT mode): each
cluster's router masquerades its nodes behind one public address, forwards only the agents'
and the registry's TCP ports, and drops whatever arrives unasked. A public node of cluster1
serves the reflector and relay (`--relay`).

The nodes learn their WireGuard port's mapping from the reflector, punch through both NATs
(direct), fall back to the relay where both routers are symmetric (`masquerade random`), and
go direct again by themselves once the routers map predictably again."""

from __future__ import annotations

import time

from nsm_client.runtime import kernel_request
from testbed.bed import Testbed, patience, ping, run
from testbed.clusters import Federation, public_ip
from tests.helpers.mesh import agent_client

POOL = "10.90.0.0/24"
RELAY_PORT = 51800
WG_ARGS = ["--remote-mechanisms", "WIREGUARD"]


def nat_federation(bed: Testbed, nodes: int = 1, symmetric: bool = False) -> Federation:
    fed = Federation.build(bed, clusters=2, nodes=nodes, agent_args=WG_ARGS, nat=True, symmetric=symmetric)
    fed.add_public_node(fed.domain("cluster1"), ["--relay", *WG_ARGS])
    return fed


def endpoints(netns: str) -> set[str]:
    """Where this node's WireGuard device sends to each peer (`wg show`; wireguard-go's control
    sockets are the host's, so only the device in NETNS is asked)."""
    names = run("ip", "-n", netns, "-o", "link", "show").stdout.split()
    device = next(n.rstrip(":").split("@")[0] for n in names if n.startswith("nsmwg"))
    out = run("ip", "netns", "exec", netns, "wg", "show", device, "endpoints").stdout
    return {line.split()[1] for line in out.splitlines() if len(line.split()) == 2}


def wait_endpoint(netns: str, want: str, within: float) -> None:
    deadline = time.monotonic() + patience(within)
    while want not in endpoints(netns):
        assert time.monotonic() < deadline, f"{netns}: WireGuard endpoint {want} not set: {endpoints(netns)}"
        time.sleep(0.2)


def relay_address(fed: Federation) -> str:
    return f"{fed.domain('cluster1').public_nodes[0].public_ip}:{RELAY_PORT}"


def connect(fed: Federation, node_index: int = 0, short: str = "c1") -> tuple[str, str]:
    """A pod on cluster1's node asking for svc@cluster2: (pod, the endpoint's address)."""
    here = fed.domain("cluster1").nodes[node_index]
    pod = fed.pod(here, short)
    conn = agent_client(here.agent).request(kernel_request(f"/var/run/netns/{pod}", "svc@cluster2", "nsm-1"))
    assert conn.path.path_segments[1].metrics["tunnel"] == "WIREGUARD"
    return pod, conn.context.ip_context.dst_ip_addrs[0].split("/")[0]


def serve(fed: Federation) -> None:
    there = fed.domain("cluster2").nodes[0]
    fed.bed.endpoint(fed.pod(there, "ep"), "ep1", "svc", POOL, there.agent)


def test_svc_of_another_cluster_through_two_nats_with_no_tunnel_port_forwarded(bed: Testbed) -> None:
    fed = nat_federation(bed)
    serve(fed)
    here, there = fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes[0]
    pod, peer = connect(fed)
    assert ping(pod, peer, count=3)
    # Direct, punched: each node sends to the other's router, at the port its NAT kept.
    assert endpoints(here.netns) == {f"{public_ip(2, 0)}:{there.wireguard_port}"}
    assert endpoints(there.netns) == {f"{public_ip(1, 0)}:{here.wireguard_port}"}
    relay = next(p for p in bed.procs if p.name == f"agent-{fed.domain('cluster1').public_nodes[0].name}")
    assert "nat path: direct" in next(p for p in bed.procs if p.name == f"agent-{here.name}").output()
    assert "relay: node seen" in relay.output()  # the reflector taught both their mappings
