"""Hitless agent restart: `kill -9` and start again, traffic never stops, nothing leaks."""

from __future__ import annotations

import os
import signal
import time

import pytest

from nsm_agent.decisions.names import wire_alias
from nsm_agent.state.journal import INTENT, Entry, JournalStore
from nsm_api.connection_pb2 import Connection
from nsm_client.runtime import kernel_request
from testbed.bed import Proc, Testbed, links, run
from testbed.cluster import Cluster, Node
from tests.helpers.mesh import agent_client, ifindex, make_mesh, only_lo, raw_endpoint
from tests.helpers.ping import lost, start_ping


def restart_agent(cluster: Cluster, node: Node, proc: Proc, extra: list[str]) -> Proc:
    os.kill(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait(5)
    new, _ = cluster.bed.agent(node.netns, node.name, cluster.registry_tcp, extra=extra)
    return new


def agent_proc(bed: Testbed, name: str) -> Proc:
    return [p for p in bed.procs if p.name == f"agent-{name}" and p.alive()][-1]


@pytest.mark.parametrize("mechanism", ["VXLAN", "WIREGUARD"])
def test_kill_9_both_agents_loses_no_ping(bed: Testbed, mechanism: str) -> None:
    cluster = Cluster.build(bed, nodes=2, agent_args=["--remote-mechanisms", mechanism])
    n1, n2 = cluster.nodes
    bed.endpoint(cluster.pod(n1, "ep"), "ep-local", "local", "10.87.0.0/24", n1.agent)
    bed.endpoint(cluster.pod(n2, "ep"), "ep-remote", "remote", "10.88.0.0/24", n2.agent)
    pod = cluster.pod(n1, "c1")
    client = agent_client(n1.agent)
    conns = [
        client.request(kernel_request(f"/var/run/netns/{pod}", service, f"nsm-{service}"))
        for service in ("local", "remote")
    ]
    indexes = {c.mechanism.parameters["name"]: ifindex(pod, c.mechanism.parameters["name"]) for c in conns}
    pings = [start_ping(bed, pod, c.context.ip_context.dst_ip_addrs[0].split("/")[0], 6) for c in conns]
    time.sleep(1)
    extra = ["--listen", "tcp://{}:5001", "--tunnel-ip", "{}", "--remote-mechanisms", mechanism]
    for node in (n1, n2):
        args = [a.format(node.tunnel_ip) for a in extra]
        new = restart_agent(cluster, node, agent_proc(bed, node.name), args)
        bed.wait_for(new, "carried on after restart")
    for p in pings:
        sent, got = lost(p)
        assert sent == got, f"lost {sent - got} of {sent} pings"
    # The agent knows its connections again, refreshes keep the same interfaces, nothing doubled.
    client = agent_client(n1.agent)
    assert len(client.connections()) == 2
    for conn in conns:
        req = kernel_request(f"/var/run/netns/{pod}", conn.network_service, conn.mechanism.parameters["name"])
        req.connection.CopyFrom(conn)
        again = client.request(req)
        assert ifindex(pod, again.mechanism.parameters["name"]) == indexes[again.mechanism.parameters["name"]]
        assert again.path.path_segments[1].expires.seconds >= conn.path.path_segments[1].expires.seconds
    assert sorted(links(pod)) == ["lo", "nsm-local", "nsm-remote"]
    wg = [d for n in cluster.nodes for d in links(n.netns) if d.startswith("nsmwg")]
    assert len(wg) == (2 if mechanism == "WIREGUARD" else 0)
    for conn in client.connections().values():
        out = Connection()
        out.CopyFrom(conn)
        out.path.index, out.id = 0, conn.path.path_segments[0].id
        client.close(out)
    assert only_lo(pod)


def test_kill_9_in_the_middle_of_a_request_leaves_nothing(bed: Testbed) -> None:
    mesh = make_mesh(bed)
    ep_pod = bed.netns("ep")
    _, journal = raw_endpoint(bed, ep_pod, "slow", "svc", mesh.agent, mode="hang")
    pod = bed.netns("c1")
    client = agent_client(mesh.agent, timeout=30)
    import threading

    failure: list[Exception] = []

    def ask() -> None:
        try:
            client.request(kernel_request(f"/var/run/netns/{pod}", "svc", "nsm-1"))
        except Exception as exc:  # the agent dies under it
            failure.append(exc)

    asker = threading.Thread(target=ask)
    asker.start()
    deadline = time.monotonic() + 10
    while "request " not in journal.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc = agent_proc(bed, "node1")
    os.kill(proc.popen.pid, signal.SIGKILL)
    asker.join(30)
    assert failure
    new, _ = bed.agent(mesh.node, "node1", mesh.registry)
    bed.wait_for(new, "undone=1")
    assert "close " in journal.read_text()  # the endpoint heard the Close
    assert agent_client(mesh.agent).connections() == {}
    assert only_lo(pod) and only_lo(ep_pod)
    assert JournalStore(bed.dir / "node1-state").entries() == []


def test_a_veth_between_two_pods_from_an_interrupted_request_is_removed(bed: Testbed) -> None:
    """Invisible from the node, found through the intent noted before it was built."""
    node = bed.netns("node")
    _, registry = bed.registry(node)
    a, b = bed.netns("a"), bed.netns("b")
    conn_id = "interrupted-1"
    alias = wire_alias("node1", conn_id)
    run("ip", "-n", a, "link", "add", "nsm-1", "type", "veth", "peer", "name", "nse-1", "netns", b)
    run("ip", "-n", a, "link", "set", "nsm-1", "alias", alias)
    run("ip", "-n", b, "link", "set", "nse-1", "alias", alias)
    run("ip", "-n", a, "link", "add", "keep0", "type", "bridge")  # not ours: must stay
    store = JournalStore(bed.dir / "node1-state")
    request = kernel_request(f"/var/run/netns/{a}", "svc", "nsm-1", conn_id=conn_id)
    store.write(Entry(conn_id, INTENT, request, notes={"netns": [f"/var/run/netns/{a}", f"/var/run/netns/{b}"]}))
    proc, _ = bed.agent(node, "node1", registry)
    bed.wait_for(proc, "undone=1")
    assert sorted(links(a)) == ["keep0", "lo"] and only_lo(b)
    assert store.entries() == []


def test_hundred_connections_survive_kill_9_mid_request(bed: Testbed) -> None:
    """90 local and 10 WireGuard connections, a 10 ms ping on each, the agent killed
    in the middle of a Request and started again: no ping lost, nothing doubled,
    nothing left of the interrupted Request."""
    import threading

    args = ["--remote-mechanisms", "WIREGUARD"]
    cluster = Cluster.build(bed, nodes=2, agent_args=args)
    n1, n2 = cluster.nodes
    bed.endpoint(cluster.pod(n1, "ep"), "ep-local", "local", "10.99.0.0/16", n1.agent)
    bed.endpoint(cluster.pod(n2, "ep"), "ep-remote", "remote", "10.100.0.0/16", n2.agent)
    slow_pod = cluster.pod(n1, "slow")
    _, slow_journal = raw_endpoint(bed, slow_pod, "slow", "slow", n1.agent, mode="hang")
    pods = [cluster.pod(n1, f"c{i}") for i in range(10)]
    client = agent_client(n1.agent)
    conns = []
    for i in range(100):
        service = "remote" if i % 10 == 0 else "local"
        pod = pods[i % 10]
        conns.append((pod, client.request(kernel_request(f"/var/run/netns/{pod}", service, f"nsm-{i // 10}"))))
    assert sum(1 for _, c in conns if c.path.path_segments[1].metrics.get("tunnel") == "WIREGUARD") == 10
    pings = [start_ping(bed, pod, c.context.ip_context.dst_ip_addrs[0].split("/")[0], 8) for pod, c in conns]
    time.sleep(1)

    victim = cluster.pod(n1, "victim")
    failed: list[Exception] = []

    def interrupted() -> None:
        try:
            agent_client(n1.agent, timeout=30).request(kernel_request(f"/var/run/netns/{victim}", "slow", "nsm-1"))
        except Exception as exc:
            failed.append(exc)

    asker = threading.Thread(target=interrupted)
    asker.start()
    deadline = time.monotonic() + 10
    while "request " not in slow_journal.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    extra = ["--listen", f"tcp://{n1.tunnel_ip}:5001", "--tunnel-ip", n1.tunnel_ip, *args]
    new = restart_agent(cluster, n1, agent_proc(bed, "node1"), extra)
    bed.wait_for(new, "carried on after restart", timeout=60)
    asker.join(30)
    assert failed
    for p in pings:
        sent, got = lost(p)
        assert sent == got, f"lost {sent - got} of {sent} pings"
    assert "close " in slow_journal.read_text() and only_lo(victim) and only_lo(slow_pod)
    assert [d for d in links(n1.netns) if d.startswith("nsmwg")] and len(
        [d for d in links(n1.netns) if d.startswith("nsmwg")]
    ) == 1
    for pod in pods:
        assert sorted(links(pod)) == sorted(["lo"] + [f"nsm-{j}" for j in range(10)])
    client = agent_client(n1.agent)
    assert len(client.connections()) == 100
    pod, conn = conns[0]
    req = kernel_request(f"/var/run/netns/{pod}", conn.network_service, conn.mechanism.parameters["name"])
    req.connection.CopyFrom(conn)
    time.sleep(1.1)
    again = client.request(req)
    assert again.path.path_segments[1].expires.seconds > conn.path.path_segments[1].expires.seconds
