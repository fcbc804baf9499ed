"""Target 2: remote set-up over VXLAN and WireGuard, against the same tunnels built by hand.

Per connection the mesh builds a VXLAN device in the client's pod and one in the
endpoint's, straight over the underlay (VXLAN) or over the node pair's one
WireGuard link (WIREGUARD). The hand-built baseline makes exactly that with
plain pyroute2 calls from one process: both devices created in their pods,
addressed, raised and routed. The node pair's first connection also brings the
WireGuard link up; that is compared with wireguard-go started and keyed by hand.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Protocol

from pyroute2 import IPRoute

from bench import local_setup
from nsm_client.runtime import AgentClient
from nsm_common.netns import inside
from nsm_common.urls import parse_address
from testbed.bed import Testbed, run
from testbed.cluster import Cluster, Node

WG_PORT = 51900
WG_MTU = 1440  # the mesh's too over a 1500-byte IPv4 underlay: 1500 - 60
VXLAN_PORT = 4790  # not the mesh's, so both can run side by side


class NodePair(Protocol):
    """Two nodes and their pods: a cluster, or two clusters' nodes (bench/interdomain.py)."""

    @property
    def nodes(self) -> list[Node]: ...
    def pod(self, node: Node, short: str) -> str: ...


@dataclass
class Remote:
    first: float  # the node pair's first connection
    setup: list[float]
    close: list[float]


def mesh(bed: Testbed, mechanism: str, n: int, extra: list[str] | None = None) -> Remote:
    """EXTRA: flags for the agents and the registry alike (`--insecure`)."""
    extra = extra or []
    cluster = Cluster.build(bed, nodes=2, agent_args=["--remote-mechanisms", mechanism, *extra], registry_args=extra)
    n1, n2 = cluster.nodes
    bed.endpoint(cluster.pod(n2, "ep"), f"ep-{mechanism.lower()}", mechanism.lower(), "10.130.0.0/16", n2.agent)
    pods = [cluster.pod(n1, f"r{i}") for i in range(n + 1)]
    client = AgentClient(parse_address(n1.agent), timeout=30)
    setup, conns = local_setup.connect_all(client, pods, mechanism.lower())
    close = local_setup.close_all(client, conns)
    client.close_channel()
    return Remote(setup[0], setup[1:], close)


@dataclass
class WgPair:
    took: float
    inner: tuple[str, str]  # node 1's and node 2's inner addresses


def _key() -> tuple[str, str]:
    private = run("wg", "genkey").stdout.strip()
    public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True).stdout
    return private, public.strip()


def wireguard_pair(bed: Testbed, nodes: list[Node]) -> WgPair:
    """wireguard-go on both nodes, keyed, addressed and peered, as one would by hand."""
    keys = [_key() for _ in nodes]
    inner = ("fd00:b::1", "fd00:b::2")
    key_files = []
    for i, (private, _) in enumerate(keys):
        path = bed.dir / f"wgb{i}.key"
        path.write_text(private)
        key_files.append(path)
    socks = [inside(f"/var/run/netns/{node.netns}", IPRoute) for node in nodes]
    t = time.perf_counter()
    for i, node in enumerate(nodes):
        bed.start(f"wgb{i}", ["wireguard-go", "-f", f"wgb{i}"], netns=node.netns, env={"WG_PROCESS_FOREGROUND": "1"})
    for i, sock in enumerate(socks):
        while not sock.link_lookup(ifname=f"wgb{i}"):
            time.sleep(0.002)
    for i, other in enumerate(reversed(nodes)):
        run("wg", "set", f"wgb{i}", "private-key", str(key_files[i]), "listen-port", str(WG_PORT),
            "peer", keys[1 - i][1], "endpoint", f"{other.tunnel_ip}:{WG_PORT}",
            "allowed-ips", f"{inner[1 - i]}/128")  # fmt: skip
        index = socks[i].link_lookup(ifname=f"wgb{i}")[0]
        socks[i].addr("add", index=index, address=inner[i], prefixlen=128, flags=0x02)
        socks[i].link("set", index=index, state="up", mtu=WG_MTU)
        socks[i].route("replace", dst=f"{inner[1 - i]}/128", oif=index, family=socket.AF_INET6)
    took = time.perf_counter() - t
    for s in socks:
        s.close()
    return WgPair(took, inner)


def by_hand(
    bed: Testbed, cluster: NodePair, n: int, ends: tuple[str, str], tag: str
) -> tuple[list[float], list[float]]:
    """`n` VXLAN pairs between pods of node 1 and node 2 with tunnel ends `ends`."""
    nodes = cluster.nodes[:2]
    node_socks = [inside(f"/var/run/netns/{node.netns}", IPRoute) for node in nodes]
    setup, made = [], []
    mtu = 1450 if ":" not in ends[0] else 1370
    for i in range(n):
        pods = [f"/var/run/netns/{cluster.pod(node, f'{tag}{i}')}" for node in nodes]
        t = time.perf_counter()
        for side in (0, 1):
            pod = inside(pods[side], IPRoute)
            fd = os.open(pods[side], os.O_RDONLY)
            v6 = ":" in ends[side]
            addr_args = {"vxlan_local6": ends[side], "vxlan_group6": ends[1 - side]} if v6 else {
                "vxlan_local": ends[side], "vxlan_group": ends[1 - side]}  # fmt: skip
            node_socks[side].link("add", ifname="nsm-1", kind="vxlan", vxlan_id=7000 + i, vxlan_port=VXLAN_PORT,
                                  mtu=mtu, net_ns_fd=fd, **addr_args)  # fmt: skip
            os.close(fd)
            index = pod.link_lookup(ifname="nsm-1")[0]
            base = f"10.131.{i // 100}"
            mine, theirs = f"{base}.{2 * (i % 100) + 1 + side}", f"{base}.{2 * (i % 100) + 2 - side}"
            pod.addr("add", index=index, address=mine, prefixlen=32)
            pod.link("set", index=index, state="up")
            pod.route("replace", dst=f"{theirs}/32", oif=index, scope=253)
            made.append((pod, index))
        setup.append(time.perf_counter() - t)
    close = []
    for pod, index in made[::2]:
        t = time.perf_counter()
        pod.link("del", index=index)
        close.append(time.perf_counter() - t)
    for pod, _ in made:
        pod.close()
    for s in node_socks:
        s.close()
    return setup, close


def run_all(bed: Testbed, n: int) -> dict[str, object]:
    out: dict[str, object] = {}
    for mechanism in ("VXLAN", "WIREGUARD"):
        with Testbed(prefix=bed.prefix + mechanism[0].lower()) as sub:
            got = mesh(sub, mechanism, n)
        out[mechanism.lower()] = {"mesh_first_s": got.first, "mesh_setup": got.setup, "mesh_close": got.close}
    with Testbed(prefix=bed.prefix + "h") as sub:
        cluster = Cluster.build(sub, nodes=2, agent_args=["--remote-mechanisms", "VXLAN"])
        setup, close = by_hand(sub, cluster, n, (cluster.nodes[0].tunnel_ip, cluster.nodes[1].tunnel_ip), "hv")
        out["vxlan"].update({"hand_setup": setup, "hand_close": close})  # type: ignore[attr-defined]
        pair = wireguard_pair(sub, cluster.nodes)
        setup, close = by_hand(sub, cluster, n, pair.inner, "hw")
        out["wireguard"].update({"hand_first_s": pair.took, "hand_setup": setup, "hand_close": close})  # type: ignore[attr-defined]
    return out
