"""Target 3 (1,000 connections at once) and 7 (closing them all).

One driver process makes every Request, one after another. Memory is the
resident-size growth of each agent and its child processes (wireguard-go)
between a warm first connection and the last one, divided by N.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from bench.local_setup import bare
from bench.stats import pct
from nsm_client.runtime import AgentClient, kernel_request
from nsm_common.urls import parse_address
from testbed.bed import Proc, Testbed, links
from testbed.cluster import Cluster
from testbed.mesh import one_node


def rss_kib(pid: int) -> int:
    """Resident size of `pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            with open(f"/proc/{current}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total


@dataclass
class Scale:
    n: int
    setup: list[float] = field(default_factory=list)
    close: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    kib_per_conn: dict[str, float] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)

    def report(self) -> dict[str, float | int | list[str] | dict[str, float]]:
        first, last = self.setup[:50], self.setup[-50:]
        return {
            "n": self.n,
            "first50_p50_ms": pct(first, 50) * 1000,
            "last50_p50_ms": pct(last, 50) * 1000,
            "flatness": pct(last, 50) / pct(first, 50),
            "per_second": self.n / self.wall_s,
            "kib_per_connection": self.kib_per_conn,
            "close_p50_ms": pct(self.close, 50) * 1000,
            "close_total_s": sum(self.close),
            "leftovers": self.leftovers,
        }


def _drive(agents: dict[str, Proc], agent_url: str, pods: list[str], service: str, warm_pod: str) -> Scale:
    client = AgentClient(parse_address(agent_url), timeout=60)
    warm = client.request(kernel_request(f"/var/run/netns/{warm_pod}", service, "nsm-1"))
    before = {name: rss_kib(p.popen.pid) for name, p in agents.items()}
    out = Scale(len(pods))
    conns = []
    started = time.perf_counter()
    for pod in pods:
        req = kernel_request(f"/var/run/netns/{pod}", service, "nsm-1")
        t = time.perf_counter()
        conns.append(client.request(req))
        out.setup.append(time.perf_counter() - t)
    out.wall_s = time.perf_counter() - started
    out.kib_per_conn = {name: (rss_kib(p.popen.pid) - before[name]) / len(pods) for name, p in agents.items()}
    for conn in [*conns, warm]:
        t = time.perf_counter()
        client.close(conn)
        out.close.append(time.perf_counter() - t)
    out.close.pop()
    client.close_channel()
    out.leftovers = [f"{pod}: {links(pod)}" for pod in [*pods, warm_pod] if links(pod) != ["lo"]]
    return out


def on_one_node(bed: Testbed, n: int) -> Scale:
    mesh = one_node(bed)
    ep_pod = bed.netns("ep")
    bed.endpoint(ep_pod, "ep1", "scale", "10.140.0.0/16", mesh.agent)
    pods = [bed.netns(f"s{i}") for i in range(n)]
    out = _drive({"agent": mesh.agent_proc}, mesh.agent, pods, "scale", bed.netns("warm"))
    if links(ep_pod) != ["lo"]:
        out.leftovers.append(f"{ep_pod}: {links(ep_pod)}")
    return out


def across_two_nodes(bed: Testbed, n: int, mechanism: str = "VXLAN") -> Scale:
    cluster = Cluster.build(bed, nodes=2, agent_args=["--remote-mechanisms", mechanism])
    n1, n2 = cluster.nodes
    ep_pod = cluster.pod(n2, "ep")
    bed.endpoint(ep_pod, "ep2", "scale2", "10.141.0.0/16", n2.agent)
    # Every agent's process tree: wireguard-go runs in a session of its own, but is the agent's child.
    agents = {p.name: p for p in bed.procs if p.name.startswith("agent-")}
    pods = [cluster.pod(n1, f"s{i}") for i in range(n)]
    out = _drive(agents, n1.agent, pods, "scale2", cluster.pod(n1, "warm"))
    if links(ep_pod) != ["lo"]:
        out.leftovers.append(f"{ep_pod}: {links(ep_pod)}")
    return out


def run_all(bed: Testbed, n: int) -> dict[str, object]:
    with Testbed(prefix=bed.prefix + "s") as sub:
        local = on_one_node(sub, n)
    with Testbed(prefix=bed.prefix + "b") as sub:
        bare_setup, bare_close = bare(sub, n)
    with Testbed(prefix=bed.prefix + "r") as sub:
        remote = across_two_nodes(sub, n)
    with Testbed(prefix=bed.prefix + "w") as sub:
        wireguard = across_two_nodes(sub, n, "WIREGUARD")
    return {
        "one_node": local.report(),
        "two_nodes": remote.report(),
        "two_nodes_wireguard": wireguard.report(),
        "bare_flatness": pct(bare_setup[-50:], 50) / pct(bare_setup[:50], 50),
        "bare_close_p50_ms": pct(bare_close, 50) * 1000,
        "bare_close_total_s": sum(bare_close),
        "raw": {
            "one_node_setup": local.setup,
            "two_nodes_setup": remote.setup,
            "two_nodes_wireguard_setup": wireguard.setup,
        },
    }
