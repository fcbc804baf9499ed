"""Target 4: TCP throughput (iperf3) through a mesh connection against a hand-built link
between the same namespaces (veth) or the same nodes (VXLAN, wireguard-go)."""

from __future__ import annotations

import json
import time

from bench.remote_setup import WG_MTU, NodePair, wireguard_pair
from nsm_client.runtime import AgentClient, kernel_request
from nsm_common.urls import parse_address
from testbed.bed import Testbed, run
from testbed.cluster import Cluster
from testbed.mesh import one_node


def iperf(bed: Testbed, client_ns: str, server_ns: str, address: str, seconds: int) -> float:
    """Gbit/s received by an iperf3 server in `server_ns` at `address`."""
    server = bed.start(f"iperf-{server_ns}-{address}", ["iperf3", "-s", "-1", "-B", address], netns=server_ns)
    time.sleep(0.5)
    out = run("ip", "netns", "exec", client_ns, "iperf3", "-c", address, "-t", str(seconds), "-J").stdout
    server.popen.wait(10)
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def _connect(agent: str, pod: str, service: str) -> str:
    conn = AgentClient(parse_address(agent)).request(kernel_request(f"/var/run/netns/{pod}", service, "nsm-1"))
    return conn.context.ip_context.dst_ip_addrs[0].split("/")[0]


def _row(mesh: float, bare: float) -> dict[str, float]:
    return {"mesh_gbps": mesh, "baseline_gbps": bare, "ratio": mesh / bare}


def veth(bed: Testbed, seconds: int) -> dict[str, float]:
    agent = one_node(bed).agent
    ep, pod = bed.netns("tp-ep"), bed.netns("tp-c")
    bed.endpoint(ep, "tp-ep", "tp", "10.123.0.0/24", agent)
    mesh = iperf(bed, pod, ep, _connect(agent, pod, "tp"), seconds)
    a, b = bed.netns("tp-a"), bed.netns("tp-b")
    run("ip", "-n", a, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", b)
    run("ip", "-n", a, "addr", "add", "10.124.0.1/24", "dev", "v0")
    run("ip", "-n", b, "addr", "add", "10.124.0.2/24", "dev", "v1")
    run("ip", "-n", a, "link", "set", "v0", "up")
    run("ip", "-n", b, "link", "set", "v1", "up")
    return _row(mesh, iperf(bed, a, b, "10.124.0.2", seconds))


def hand_vxlan(cluster: NodePair, ends: tuple[str, str], mtu: int, subnet: str) -> str:
    """A VXLAN between node 1 and node 2 by hand; returns node 2's address on it."""
    n1, n2 = cluster.nodes
    for here, local, remote, host in ((n1, ends[0], ends[1], 1), (n2, ends[1], ends[0], 2)):
        run("ip", "-n", here.netns, "link", "add", "hvx", "type", "vxlan", "id", "4242", "local", local,
            "remote", remote, "dstport", "4790")  # fmt: skip
        run("ip", "-n", here.netns, "link", "set", "hvx", "mtu", str(mtu), "up")
        run("ip", "-n", here.netns, "addr", "add", f"{subnet}.{host}/24", "dev", "hvx")
    return f"{subnet}.2"


def vxlan(bed: Testbed, seconds: int) -> dict[str, float]:
    cluster = Cluster.build(bed, nodes=2, agent_args=["--remote-mechanisms", "VXLAN"])
    n1, n2 = cluster.nodes
    ep, pod = cluster.pod(n2, "ep"), cluster.pod(n1, "c")
    bed.endpoint(ep, "vx-ep", "vx", "10.125.0.0/24", n2.agent)
    mesh = iperf(bed, pod, ep, _connect(n1.agent, pod, "vx"), seconds)
    far = hand_vxlan(cluster, (n1.tunnel_ip, n2.tunnel_ip), 1450, "10.126.0")
    return _row(mesh, iperf(bed, n1.netns, n2.netns, far, seconds))


def wireguard(bed: Testbed, seconds: int) -> dict[str, float]:
    """Against a plain wireguard-go link (what the issue asks) and against the mesh's own
    shape built by hand, a VXLAN over a wireguard-go link: the gap between the two is
    the inner VXLAN's, which lets one WireGuard device carry overlapping ranges."""
    cluster = Cluster.build(bed, nodes=2, agent_args=["--remote-mechanisms", "WIREGUARD"])
    n1, n2 = cluster.nodes
    ep, pod = cluster.pod(n2, "ep"), cluster.pod(n1, "c")
    bed.endpoint(ep, "wg-ep", "wg", "10.127.0.0/24", n2.agent)
    mesh = iperf(bed, pod, ep, _connect(n1.agent, pod, "wg"), seconds)
    pair = wireguard_pair(bed, cluster.nodes)
    plain = iperf(bed, n1.netns, n2.netns, pair.inner[1], seconds)
    far = hand_vxlan(cluster, pair.inner, WG_MTU - 70, "10.128.0")
    shaped = iperf(bed, n1.netns, n2.netns, far, seconds)
    return {**_row(mesh, plain), "same_shape_gbps": shaped, "same_shape_ratio": mesh / shaped}


def run_all(bed: Testbed, seconds: int) -> dict[str, dict[str, float]]:
    out = {}
    for name, fn in (("veth", veth), ("vxlan", vxlan), ("wireguard", wireguard)):
        with Testbed(prefix=bed.prefix + name[0]) as sub:
            out[name] = fn(sub, seconds)
    return out
