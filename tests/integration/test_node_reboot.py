"""A node's reboot, as its agent finds it: a journal whose namespaces, interfaces and
endpoint processes are all gone, and a new kernel boot id. Within one request timeout the
agent closes what the journal promised elsewhere (the other node's tunnel end, the
endpoint's lease there), unregisters the endpoints that registered through it before,
and serves new Requests at once.

What a reboot does is done by hand: every process of the node is killed, its pods'
namespaces are deleted, and the boot id the agent keeps is made an older one. The kernel's
own boot id cannot change here, so that is the one part of a real reboot not covered.
"""

from __future__ import annotations

import os
import signal
import time

from nsm_agent.state.journal import read_log
from nsm_api.registry_pb2 import NetworkServiceEndpoint
from nsm_client.runtime import AgentClient, kernel_request
from nsm_common.urls import parse_address
from testbed.bed import Testbed, links, ping, run
from testbed.cluster import Cluster
from tests.helpers.registry import Registry

REQUEST_TIMEOUT = 15.0  # the agent's default --request-timeout


def peer_ip(conn_ip: str) -> str:
    return conn_ip.split("/")[0]


def test_an_agent_after_its_nodes_reboot_cleans_up_what_its_journal_promised(bed: Testbed) -> None:
    cluster = Cluster.build(bed, nodes=2)
    n1, n2 = cluster.nodes
    far_ep = cluster.pod(n2, "ep")
    bed.endpoint(far_ep, "far", "far-svc", "10.99.0.0/24", n2.agent)
    near_ep = cluster.pod(n1, "ep")
    near_proc, _ = bed.endpoint(near_ep, "near", "near-svc", "10.99.1.0/24", n1.agent)
    pods = [cluster.pod(n1, f"c{i}") for i in range(3)]
    client = AgentClient(parse_address(n1.agent), timeout=10)
    conns = [client.request(kernel_request(f"/var/run/netns/{p}", "far-svc", "nsm-1")) for p in pods[:2]]
    conns.append(client.request(kernel_request(f"/var/run/netns/{pods[2]}", "near-svc", "nsm-1")))
    client.close_channel()
    for pod, conn in zip(pods, conns, strict=True):
        assert ping(pod, peer_ip(conn.context.ip_context.dst_ip_addrs[0]))
    assert len([n for n in links(far_ep) if n != "lo"]) == 2
    registry = Registry(cluster.registry)
    assert [e.name for e in registry.endpoints(NetworkServiceEndpoint(name="near"))] == ["near"]

    # The reboot: node 1's processes die, its namespaces go, its boot id changes.
    agent1 = next(p for p in bed.procs if p.name == "agent-node1" and p.alive())
    for proc in (agent1, near_proc):
        os.kill(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(5)
    for ns in [*pods, near_ep]:
        run("ip", "netns", "del", ns)
        bed.namespaces.remove(ns)
    (bed.dir / "node1-state" / "boot_id").write_text("00000000-0000-0000-0000-000000000000\n")

    started = time.monotonic()
    new, _ = bed.agent(
        n1.netns,
        "node1",
        cluster.registry_tcp,
        extra=["--listen", f"tcp://{n1.tunnel_ip}:5001", "--tunnel-ip", n1.tunnel_ip],
    )
    fresh_pod = cluster.pod(n1, "fresh")
    fresh = AgentClient(parse_address(n1.agent), timeout=10).request(
        kernel_request(f"/var/run/netns/{fresh_pod}", "far-svc", "nsm-1")
    )
    served_after = time.monotonic() - started
    assert "the node rebooted since the agent last ran" in new.output()
    while len([n for n in links(far_ep) if n != "lo"]) > 1:  # the fresh one's tunnel end stays
        assert time.monotonic() - started < REQUEST_TIMEOUT, links(far_ep)
        time.sleep(0.05)
    while registry.endpoints(NetworkServiceEndpoint(name="near")):
        assert time.monotonic() - started < REQUEST_TIMEOUT, "the rebooted node's endpoint is still registered"
        time.sleep(0.05)
    cleaned_after = time.monotonic() - started
    print(f"after the reboot: serving in {served_after:.2f} s, cleaned up in {cleaned_after:.2f} s")
    # The far endpoint's leases went with the connections: it holds the new clients' only.
    again_pod = cluster.pod(n1, "again")
    again = AgentClient(parse_address(n1.agent), timeout=10).request(
        kernel_request(f"/var/run/netns/{again_pod}", "far-svc", "nsm-1")
    )
    far = AgentClient(parse_address(f"unix://{bed.dir}/ep-far.sock"), timeout=5)
    held = far.connections()
    far.close_channel()
    assert len(held) == 2, sorted(held)
    assert {c.network_service for c in held.values()} == {"far-svc"} and again.network_service == "far-svc"
    assert ping(fresh_pod, peer_ip(fresh.context.ip_context.dst_ip_addrs[0]))
    journal = read_log(bed.dir / "node1-state" / "connections.log")
    assert len(journal) == 2, sorted(journal)  # fresh and again: none of before the reboot
