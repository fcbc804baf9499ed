"""Through NAT with no port forwarded for the tunnels (testbed/clusters.py, NAT mode): each
cluster's router masquerades its nodes behind one public address, forwards only the agents'
and the registry's TCP ports, and drops whatever arrives unasked. A public node of cluster1
serves the reflector and relay (`--relay`).

The nodes learn their WireGuard port's mapping from the reflector, punch through both NATs
(direct), fall back to the relay where both routers are symmetric (`masquerade random`), and
go direct again by themselves once the routers map predictably again."""

from __future__ import annotations

import json
import os
import signal
import time

import grpc
import pytest
from scapy.layers.inet import UDP

from nsm_client.runtime import kernel_request
from nsm_common.urls import host_port
from testbed.bed import Testbed, links, patience, ping, run
from testbed.clusters import Federation, public_ip
from testbed.keeper import events, peer, wait_event
from tests.helpers.across import keep_across
from tests.helpers.capture import capture
from tests.helpers.mesh import agent_client
from tests.helpers.ping import lost, start_ping

POOL = "10.90.0.0/24"
RELAY_PORT = 51800
WG_ARGS = ["--remote-mechanisms", "WIREGUARD"]
# One end's peer is made anew on the relay, so a handshake goes at once; lost (crossing a
# retry of the other end's), WireGuard tries again 5 s later: twice within this. The wait
# would pass without the immediate handshake too: tests/integration/test_wireguard_endpoint_move.py
# is what guards that.
FIRST_BY_RELAY = 12


def nat_federation(
    bed: Testbed, nodes: int = 1, symmetric: bool = False, family: int = 4, cluster1_args: list[str] | None = None
) -> Federation:
    fed = Federation.build(bed, clusters=2, nodes=nodes, agent_args=WG_ARGS, nat=True, symmetric=symmetric,
                           family=family, domain_agent_args={"cluster1": cluster1_args or []})  # fmt: skip
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
    return host_port(fed.domain("cluster1").public_nodes[0].public_ip, RELAY_PORT)


def connect(fed: Federation, node_index: int = 0, short: str = "c1") -> tuple[str, str]:
    """A pod on cluster1's node asking for svc@cluster2: (pod, the endpoint's address)."""
    here = fed.domain("cluster1").nodes[node_index]
    pod = fed.pod(here, short)
    conn = agent_client(here.agent).request(kernel_request(f"/var/run/netns/{pod}", "svc@cluster2", "nsm-1"))
    assert conn.path.path_segments[1].metrics["tunnel"] == "WIREGUARD"
    return pod, conn.context.ip_context.dst_ip_addrs[0].split("/")[0]


def answered(pod: str, address: str, within: float) -> bool:
    """Whether an echo comes back before WITHIN seconds (patience) are out, ping after ping."""
    deadline = time.monotonic() + patience(within)
    while not ping(pod, address, timeout=1):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)  # ping may fail at once (no route yet)
    return True


def connect_by_relay(fed: Federation) -> tuple[str, str]:
    """Ep1 served and connected to, where no direct path forms: both ends' WireGuard endpoint
    on the relay, and echoes answered through it."""
    serve(fed)
    pod, peer = connect(fed)
    for node in (fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes[0]):
        wait_endpoint(node.netns, relay_address(fed), 10)
    assert answered(pod, peer, FIRST_BY_RELAY)
    return pod, peer


def serve(fed: Federation) -> str:
    """Endpoint ep1 of svc on cluster2's node; returns its pod."""
    there = fed.domain("cluster2").nodes[0]
    pod = fed.pod(there, "ep")
    fed.bed.endpoint(pod, "ep1", "svc", POOL, there.agent)
    return pod


@pytest.mark.parametrize("family", [4, 6])
def test_svc_of_another_cluster_through_two_nats_with_no_tunnel_port_forwarded(bed: Testbed, family: int) -> None:
    """IPv4 behind masquerade, or IPv6 behind NAT66 masquerade (as some clouds do it)."""
    fed = nat_federation(bed, family=family)
    serve(fed)
    here, there = fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes[0]
    pod, peer = connect(fed)
    assert ping(pod, peer, count=3)
    # Direct, punched: each node sends to the other's router, at the port its NAT kept.
    assert endpoints(here.netns) == {host_port(public_ip(2, 0, family), there.wireguard_port)}
    assert endpoints(there.netns) == {host_port(public_ip(1, 0, family), here.wireguard_port)}
    relay = next(p for p in bed.procs if p.name == f"agent-{fed.domain('cluster1').public_nodes[0].name}")
    assert "nat path: direct" in next(p for p in bed.procs if p.name == f"agent-{here.name}").output()
    assert "relay: node seen" in relay.output()  # the reflector taught both their mappings


def test_two_nodes_behind_one_router_both_reach_another_cluster(bed: Testbed) -> None:
    """Behind one masquerade, each node's WireGuard listens on a port of its own, which the NAT
    keeps: both mappings hold, toward the reflector and toward the far node alike."""
    fed = nat_federation(bed, nodes=2)
    serve(fed)
    n1, n2 = fed.domain("cluster1").nodes
    there = fed.domain("cluster2").nodes[0]
    assert n1.wireguard_port != n2.wireguard_port
    for index, short in ((0, "c1"), (1, "c2")):
        pod, peer = connect(fed, index, short)
        assert ping(pod, peer, count=3)
    # The far node sends to both at the one router, each at its own port.
    assert endpoints(there.netns) == {
        f"{public_ip(1, 0)}:{n1.wireguard_port}",
        f"{public_ip(1, 0)}:{n2.wireguard_port}",
    }


def test_two_nodes_behind_one_router_with_one_port_still_connect(bed: Testbed) -> None:
    """Both nodes' WireGuard on 51820 behind one masquerade (a DaemonSet's one setting): the
    first keeps the port; the second's tuples are taken, and the NAT picks it another port.
    Whichever path that leaves (direct where the NAT picks the same port toward the far node
    as toward the reflector, as Linux did here; else the relay), both connect, and the far node
    sends to each at a mapping of its own."""
    fed = nat_federation(bed, nodes=2, cluster1_args=["--wireguard-port", "51820"])
    serve(fed)
    there = fed.domain("cluster2").nodes[0]
    for index, short in ((0, "c1"), (1, "c2")):
        pod, peer = connect(fed, index, short)
        assert ping(pod, peer, count=3, timeout=3)
    seen = endpoints(there.netns)
    assert len(seen) == 2 and f"{public_ip(1, 0)}:51820" in seen, seen


def test_symmetric_nats_on_both_sides_are_relayed_and_go_direct_again(bed: Testbed) -> None:
    """`masquerade random` on both routers: a new public port per destination, so the mapping
    the reflector saw is no good toward the far node and no punch gets through. The relay
    carries the tunnel, and sees only WireGuard's packets. Once the routers keep ports again
    (restarted: their conntrack flushed), the pings that went on meanwhile find the direct
    path, and WireGuard's endpoint moves back to it."""
    fed = nat_federation(bed, symmetric=True)
    here, there = fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes[0]
    relay_node = fed.domain("cluster1").public_nodes[0]
    pod, peer = connect_by_relay(fed)
    pattern = "cafe0123456789ab"
    with capture(relay_node.netns, "eth0") as packets:
        assert ping(pod, peer, count=5)
        run("ip", "netns", "exec", pod, "ping", "-c", "3", "-i", "0.2", "-p", pattern, peer)
    relayed = [p for p in packets if UDP in p and RELAY_PORT in (p[UDP].sport, p[UDP].dport)]
    payloads = [bytes(p[UDP].payload) for p in relayed]
    wireguard = [d for d in payloads if d[:1] in (b"\x01", b"\x02", b"\x03", b"\x04") and d[1:4] == b"\0\0\0"]
    ours = [d for d in payloads if d[:4] == b"NSMt"]
    assert len(wireguard) >= 16  # 8 pings and 8 answers, each relayed in and out at least once
    assert len(wireguard) + len(ours) == len(payloads)  # nothing but WireGuard and the probes
    assert not any(bytes.fromhex(pattern) in d for d in payloads)  # ciphertext only

    for domain in fed.domains:
        fed.set_symmetric(domain, False)
        fed.flush_conntrack(domain)
    wait_endpoint(here.netns, f"{public_ip(2, 0)}:{there.wireguard_port}", 20)
    wait_endpoint(there.netns, f"{public_ip(1, 0)}:{here.wireguard_port}", 20)
    assert ping(pod, peer, count=3)


def test_a_conntrack_flush_during_iperf3_is_survived_without_help(bed: Testbed) -> None:
    """Both routers forget every mapping in the middle of a transfer (a router restart): the
    next packets out make them again, the holes with them, and the transfer goes on."""
    fed = nat_federation(bed)
    ep = serve(fed)
    pod, peer = connect(fed)
    assert ping(pod, peer, count=2)
    server = bed.start("iperf3-server", ["iperf3", "-s", "-1", "-B", peer], netns=ep)
    time.sleep(0.5)
    client = bed.start("iperf3-client", ["iperf3", "-c", peer, "-t", "8", "-i", "1", "--json"], netns=pod)
    time.sleep(3)
    for domain in fed.domains:
        fed.flush_conntrack(domain)
    assert client.popen.wait(patience(30)) == 0, client.output()
    report = json.loads(client.output()[client.output().index("{") :])
    after = [i["sum"]["bytes"] for i in report["intervals"][4:]]  # the seconds after the flush
    assert len(after) >= 3 and all(b > 0 for b in after), after
    server.popen.wait(patience(10))


@pytest.mark.parametrize("fault", ["endpoint-killed", "far-agent-killed", "near-agent-killed", "far-registry-killed"])
def test_heal_across_domains_through_nat(bed: Testbed, fault: str) -> None:
    """Two endpoints of svc on two nodes of cluster2, both clusters behind NAT; a client of
    cluster1 keeps its connection (`nsmctl connect --watch`) while pings run.

    - The serving endpoint killed: healed onto the other, across the boundary and both NATs.
    - Either agent killed -9 and started again: the tunnel (kernel and wireguard-go state,
      the holes kept open by its keepalives) outlives it, no ping is lost, and the new agent
      carries the connection on and follows the path again.
    - The far domain's registry killed: the data path needs no registry; a new Request for
      svc@cluster2 is refused with a reason that names the far registry, and served again
      once the registry is back and the far endpoints have renewed into it."""
    fed = nat_federation(bed, nodes=2)
    here = fed.domain("cluster1").nodes[0]
    kept = keep_across(bed, fed)
    keeper, pod, first, serving, serving_node = kept.keeper, kept.pod, kept.first, kept.serving, kept.serving_node
    n = len(events(keeper))
    if fault == "endpoint-killed":
        os.kill(kept.endpoints[serving].popen.pid, signal.SIGKILL)
        healed = wait_event(keeper, "healed", n, timeout=30)
        assert healed["endpoint"] != serving
        assert ping(pod, peer(healed), count=2, timeout=2)
    elif fault.endswith("agent-killed"):
        node = serving_node if fault == "far-agent-killed" else here
        agent = bed.live(f"agent-{node.name}")
        pinger = start_ping(bed, pod, peer(first), 6)
        time.sleep(1)
        os.kill(agent.popen.pid, signal.SIGKILL)
        agent.popen.wait(5)
        time.sleep(1)
        new = bed.restart(agent, "agent serving")
        bed.wait_for(new, "nat path: following")  # the carried-on tunnel's path is followed again
        sent, received = lost(pinger)
        assert received == sent, f"{sent - received} of {sent} pings lost"
        assert ping(pod, peer(first), count=2)
    else:
        registry = bed.live("registry-cluster2")
        registry.stop(signal.SIGKILL)
        pinger = start_ping(bed, pod, peer(first), 3)
        sent, received = lost(pinger)
        assert received == sent, f"{sent - received} of {sent} pings lost"
        with pytest.raises(grpc.RpcError) as info:
            agent_client(here.agent).request(
                kernel_request(f"/var/run/netns/{fed.pod(here, 'c2')}", "svc@cluster2", "nsm-1")
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "cluster2" in str(info.value.details())
        bed.restart(registry, "registry serving")
        # Healed once the far endpoints renew into the new registry (a third of its 60 s).
        other = fed.pod(here, "c3")
        request = kernel_request(f"/var/run/netns/{other}", "svc@cluster2", "nsm-1")
        deadline = time.monotonic() + patience(30)
        client = agent_client(here.agent)  # one channel for every try
        try:
            while True:
                try:
                    again = client.request(request)
                    break
                except grpc.RpcError:
                    in_time = time.monotonic() < deadline
                    assert in_time, "no Request for svc@cluster2 served after its registry came back"
                    time.sleep(0.5)
        finally:
            client.close_channel()
        assert ping(other, again.context.ip_context.dst_ip_addrs[0].split("/")[0], count=2)
    keeper.stop()
    assert links(pod) == ["lo"]


def test_one_node_relayed_to_two_peers_through_the_one_relay_port(bed: Testbed) -> None:
    """Symmetric NATs, two nodes of cluster1 to one node of cluster2: the far node reaches both
    through the relay from its one WireGuard port, and the relay tells which peer each packet
    is for by WireGuard's own headers (whose key a handshake's mac1 is made with, the receiver
    index of the rest), never by decrypting anything."""
    fed = nat_federation(bed, nodes=2, symmetric=True)
    serve(fed)
    n1, n2 = fed.domain("cluster1").nodes
    there = fed.domain("cluster2").nodes[0]
    pods = [connect(fed, index, short) for index, short in ((0, "c1"), (1, "c2"))]
    for node in (n1, n2):
        wait_endpoint(node.netns, relay_address(fed), 10)
    assert endpoints(there.netns) == {relay_address(fed)}  # both peers, by the relay
    for pod, far in pods:
        assert answered(pod, far, FIRST_BY_RELAY), pod


def test_one_symmetric_side_stays_relayed(bed: Testbed) -> None:
    """Only cluster1's router symmetric: its node's port toward the far node is unknown to
    anyone, and the far router lets in only what answers its own packets; no direct path can
    form, and the relay carries the tunnel."""
    fed = nat_federation(bed)
    fed.set_symmetric(fed.domain("cluster1"), True)
    connect_by_relay(fed)  # both ends on the relay, echoes answered through it


@pytest.mark.parametrize("side", ["near", "far"])
def test_a_relayed_tunnel_outlives_its_agent_s_restart(bed: Testbed, side: str) -> None:
    """Both routers symmetric, the tunnel by the relay; one agent killed -9 and started again.
    The device still sends by the relay, and the new agent's path starts there: it does not
    move the endpoint back to the told mapping (which no packet gets through) and punch for
    3 s first. No ping is lost."""
    fed = nat_federation(bed, symmetric=True)
    here, there = fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes[0]
    pod, peer = connect_by_relay(fed)
    node = here if side == "near" else there
    agent = bed.live(f"agent-{node.name}")
    pinger = start_ping(bed, pod, peer, 8)
    time.sleep(1)
    os.kill(agent.popen.pid, signal.SIGKILL)
    agent.popen.wait(5)
    new = bed.restart(agent, "agent serving")
    bed.wait_for(new, "nat path: following")
    sent, received = lost(pinger)  # ends 4 s or more after the restart: past the punch's 3 s
    assert received == sent, f"{sent - received} of {sent} pings lost"
    assert endpoints(node.netns) == {relay_address(fed)}
    assert "nat path: wireguard endpoint set" not in new.output()  # never moved off the relay
