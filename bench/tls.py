"""Mutual TLS on and off, in one run: local and remote (VXLAN) set-up against the same
mesh with `--insecure`, and against bare pyroute2 and a VXLAN pair built by hand.

Local set-up crosses one TCP hop when the agent reaches its registry over TCP (here it
does, as in a cluster; the registry's answers come from the agent's watched copy, so
TLS costs the request path nothing there). Remote set-up crosses the agent-to-agent
hop on every Request: that is where mutual TLS shows, if anywhere.
"""

from __future__ import annotations

from bench import local_setup, remote_setup
from nsm_client.runtime import AgentClient
from nsm_common.urls import parse_address
from testbed.bed import Testbed
from testbed.cluster import Cluster

PLAINTEXT = ["--insecure"]


def local(bed: Testbed, n: int, secure: bool) -> list[float]:
    """Local veth set-up, the agent asking its registry over TCP (mutual TLS unless not SECURE)."""
    extra = [] if secure else PLAINTEXT
    node = bed.netns("node")
    bed.registry(node, extra=extra)  # unix and tcp://127.0.0.1:5002 in the node's namespace
    _, agent = bed.agent(node, "node1", "tcp://127.0.0.1:5002", extra=extra)
    bed.endpoint(bed.netns("ep"), "ep1", "bench", "10.120.0.0/16", agent)
    pods = [bed.netns(f"m{i}") for i in range(n + 1)]
    client = AgentClient(parse_address(agent), timeout=30)
    setup, conns = local_setup.connect_all(client, pods, "bench")
    local_setup.close_all(client, conns)
    client.close_channel()
    return setup[1:]  # the first warms the registry's cache


def remote(bed: Testbed, n: int, secure: bool) -> list[float]:
    """Remote VXLAN set-up between two nodes (mutual TLS between the agents unless not SECURE)."""
    return remote_setup.mesh(bed, "VXLAN", n, [] if secure else PLAINTEXT).setup  # past the first


def run_all(bed: Testbed, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for name, fn in (("local_tls", local), ("remote_tls", remote)):
        for secure in (True, False):
            with Testbed(prefix=bed.prefix + name[0] + ("s" if secure else "p")) as sub:
                out[f"{name}_{'on' if secure else 'off'}"] = fn(sub, n, secure)
    with Testbed(prefix=bed.prefix + "b") as sub:
        out["local_bare"] = local_setup.bare(sub, n)[0]
    with Testbed(prefix=bed.prefix + "h") as sub:
        cluster = Cluster.build(sub, nodes=2, agent_args=["--remote-mechanisms", "VXLAN"])
        ends = (cluster.nodes[0].tunnel_ip, cluster.nodes[1].tunnel_ip)
        out["remote_hand"] = remote_setup.by_hand(sub, cluster, n, ends, "hv")[0]
    return out
