"""Several nodes on one underlay, each with its own agent: the multi-node test bed.

    python -m testbed.cluster --nodes 3 [--ipv6] [--mtu 1500]
    python -m testbed.cluster --clusters 3 [--nodes 2] [--ipv6] [--nat [--symmetric]]     (testbed/clusters.py)

builds it, prints how to reach it, and removes it all on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass, field

from testbed.bed import Testbed, run
from testbed.clusters import Federation
from testbed.etcd import start_etcd

UNDERLAY = {4: ("192.0.2.{}", 24, "192.0.2.254"), 6: ("2001:db8::{}", 64, "2001:db8::fe")}


@dataclass
class Node:
    name: str
    netns: str
    tunnel_ip: str
    agent: str  # unix:// URL of its agent


@dataclass
class Cluster:
    bed: Testbed
    family: int = 4
    mtu: int = 1500
    nodes: list[Node] = field(default_factory=list)
    registry: str = ""  # unix:// URL
    registry_tcp: str = ""
    underlay_ns: str = ""
    store: str = "memory"
    registry_args: list[str] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        bed: Testbed,
        nodes: int = 2,
        family: int = 4,
        mtu: int = 1500,
        agent_args: list[str] | None = None,
        etcd: bool = False,
        registry_args: list[str] | None = None,
    ) -> Cluster:
        """`etcd`: the registry keeps its records in an etcd started beside it."""
        cluster = cls(bed, family, mtu, registry_args=list(registry_args or []))
        cluster._underlay(etcd)
        for i in range(1, nodes + 1):
            cluster.add_node(i, agent_args)
        return cluster

    def _addr(self, host: str) -> list[str]:
        pattern, plen, _ = UNDERLAY[self.family]
        return [f"{pattern.format(host)}/{plen}"] + (["nodad"] if self.family == 6 else [])

    def _underlay(self, etcd: bool) -> None:
        self.underlay_ns = self.bed.netns("ul")
        ns = self.underlay_ns
        if etcd:
            self.store = start_etcd(self.bed, netns=ns).url
        run("ip", "-n", ns, "link", "add", "br0", "mtu", str(self.mtu), "type", "bridge")
        _, _, reg_ip = UNDERLAY[self.family]
        plen = UNDERLAY[self.family][1]
        run("ip", "-n", ns, "addr", "add", f"{reg_ip}/{plen}", *(["nodad"] if self.family == 6 else []), "dev", "br0")
        run("ip", "-n", ns, "link", "set", "br0", "up")
        host = f"[{reg_ip}]" if self.family == 6 else reg_ip
        extra = ["--listen", f"tcp://{host}:5002", "--store", self.store, *self.registry_args]
        _, self.registry = self.bed.registry(ns, extra=extra)
        self.registry_tcp = f"tcp://{host}:5002"

    def add_node(self, i: int, agent_args: list[str] | None = None) -> Node:
        """Node `i` (1-based: its underlay address ends in i) with its agent."""
        ns = self.bed.netns(f"node{i}")
        port = f"{self.bed.prefix}-n{i}"[-15:]
        run("ip", "link", "add", port, "netns", self.underlay_ns, "mtu", str(self.mtu), "type", "veth",
            "peer", "name", "eth0", "netns", ns, "mtu", str(self.mtu))  # fmt: skip
        run("ip", "-n", self.underlay_ns, "link", "set", port, "master", "br0", "up")
        run("ip", "-n", ns, "addr", "add", *self._addr(str(i)), "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        tunnel_ip = UNDERLAY[self.family][0].format(i)
        host = f"[{tunnel_ip}]" if self.family == 6 else tunnel_ip
        _, agent = self.bed.agent(
            ns,
            f"node{i}",
            self.registry_tcp,
            extra=["--listen", f"tcp://{host}:5001", "--tunnel-ip", tunnel_ip, *(agent_args or [])],
        )
        node = Node(f"node{i}", ns, tunnel_ip, agent)
        self.nodes.append(node)
        return node

    def restart_registry(self) -> None:
        """`kill -9` of the registry and a new start with the same flags (a memory store starts empty)."""
        proc = [p for p in self.bed.procs if p.name == "registry" and p.alive()][-1]
        os.kill(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(5)
        host = self.registry_tcp.removeprefix("tcp://").rsplit(":", 1)[0]
        extra = ["--listen", f"tcp://{host}:5002", "--store", self.store, *self.registry_args]
        _, self.registry = self.bed.registry(self.underlay_ns, extra=extra)

    def pod(self, node: Node, short: str) -> str:
        """A pod is a namespace; which node it is "on" is which agent it asks."""
        return self.bed.netns(f"{node.name}-{short}")


def describe_federation(fed: Federation) -> None:
    print(f"internet: namespace {fed.internet_ns}" + (" (routers: NAT gateways)" if fed.nat else ""))
    for d in fed.domains:
        print(f"domain {d.name}: registry {d.registry} ({d.registry_public} outside), router {d.router_ns}")
        for node in d.nodes + d.public_nodes:
            print(f"  {node.name}: namespace {node.netns}, {node.private_ip} inside, {node.public_url} outside, "
                  f"WireGuard port {node.wireguard_port}, agent {node.agent}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build a multi-node mesh test bed in namespaces")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--ipv6", action="store_true", help="IPv6 underlay")
    p.add_argument("--mtu", type=int, default=1500)
    p.add_argument("--etcd", action="store_true", help="the registry stores in an etcd of its own")
    p.add_argument("--clusters", type=int, default=0,
                   help="that many clusters behind routers on a shared internet, each a domain (3 or more: "
                        "the last holds only a floating registry)")  # fmt: skip
    p.add_argument("--nat", action="store_true",
                   help="with --clusters: each router a NAT gateway (one public address, masquerade, only "
                        "TCP control ports forwarded in) instead of a 1:1 NAT")  # fmt: skip
    p.add_argument(
        "--symmetric",
        action="store_true",
        help="with --nat: the routers map each new connection to a random port (a symmetric NAT)",
    )
    args = p.parse_args(argv)
    if args.clusters and (args.etcd or args.mtu != 1500):
        p.error("--clusters builds clusters with memory registries on 1500-byte links: --etcd and --mtu do not apply")
    if args.clusters == 1 or args.clusters < 0:
        p.error("--clusters: at least 2")
    if args.nat and not args.clusters:
        p.error("--nat: the routers of --clusters")
    if args.symmetric and not args.nat:
        p.error("--symmetric: a kind of --nat")
    bed = Testbed()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if args.clusters:
            fed = Federation.build(bed, args.clusters, args.nodes, family=6 if args.ipv6 else 4, nat=args.nat,
                                   symmetric=args.symmetric)  # fmt: skip
            describe_federation(fed)
        else:
            cluster = Cluster.build(bed, args.nodes, 6 if args.ipv6 else 4, args.mtu, etcd=args.etcd)
            print(f"registry: {cluster.registry} ({cluster.registry_tcp} on the underlay), store {cluster.store}")
            for node in cluster.nodes:
                print(f"{node.name}: namespace {node.netns}, tunnel {node.tunnel_ip}, agent {node.agent}")
        print(f"logs: {bed.dir}; Ctrl-C removes everything", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        bed.cleanup()


if __name__ == "__main__":
    sys.exit(main())
