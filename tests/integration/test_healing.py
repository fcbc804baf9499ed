"""Healing by the client runtime (`nsmctl connect --watch`): fault → restored ping, timed."""

from __future__ import annotations

import os
import signal
import time

import pytest

from testbed.bed import Proc, Testbed, links, ping, run
from testbed.cluster import Cluster
from testbed.keeper import events, keep, peer, wait_event
from tests.helpers.mesh import make_mesh


def time_to_ping(pod: str, fault_at: float, proc: Proc, after: int) -> tuple[float, dict[str, object]]:
    healed = wait_event(proc, "healed", after)
    assert ping(pod, peer(healed), count=1, timeout=2)
    return time.time() - fault_at, healed


@pytest.mark.parametrize("fault", ["killed", "pod-removed", "unreachable"])
def test_heal_on_one_node(bed: Testbed, fault: str) -> None:
    mesh = make_mesh(bed)
    pods = {name: bed.netns(name) for name in ("ep1", "ep2")}
    procs = {
        name: bed.endpoint(pod, name, "svc", cidr, mesh.agent)[0]
        for (name, pod), cidr in zip(pods.items(), ("10.91.0.0/24", "10.92.0.0/24"), strict=True)
    }
    client = bed.netns("c1")
    keeper = keep(bed, mesh.agent, client, "svc")
    first = wait_event(keeper, "connected")
    serving = str(first["endpoint"])
    n = len(events(keeper))
    fault_at = time.time()
    if fault == "killed":
        os.kill(procs[serving].popen.pid, signal.SIGKILL)
    elif fault == "pod-removed":
        os.kill(procs[serving].popen.pid, signal.SIGKILL)
        run("ip", "netns", "del", pods[serving])
        bed.namespaces.remove(pods[serving])
    else:  # the endpoint's side of the wire loses its address: only the data plane can tell
        for name in links(pods[serving]):
            if name != "lo":
                run("ip", "-n", pods[serving], "addr", "flush", "dev", name)
    took, healed = time_to_ping(client, fault_at, keeper, n)
    assert healed["endpoint"] != serving
    assert healed["interface"] == "nsm-1"
    print(f"heal after endpoint {fault}: {took * 1000:.0f} ms from fault to restored ping")
    assert took < 5  # the target (under 1 s) is measured by the benchmark, not asserted here
    keeper.stop()
    assert links(client) == ["lo"]


def test_an_endpoint_killed_on_another_node_is_healed_from_its_agent_s_monitor(bed: Testbed) -> None:
    """The endpoint's pod still answers pings, so no probe notices: its node's agent reports
    it DOWN, and the client's agent, following that agent's Monitor, passes it on."""
    cluster = Cluster.build(bed, nodes=3)
    n1, n2, n3 = cluster.nodes
    procs = {
        "ep-2": bed.endpoint(cluster.pod(n2, "ep"), "ep-2", "svc", "10.93.0.0/24", n2.agent)[0],
        "ep-3": bed.endpoint(cluster.pod(n3, "ep"), "ep-3", "svc", "10.94.0.0/24", n3.agent)[0],
    }
    client = cluster.pod(n1, "c1")
    keeper = keep(bed, n1.agent, client, "svc")
    first = wait_event(keeper, "connected")
    n = len(events(keeper))
    fault_at = time.time()
    os.kill(procs[str(first["endpoint"])].popen.pid, signal.SIGKILL)
    took, healed = time_to_ping(client, fault_at, keeper, n)
    assert healed["endpoint"] != first["endpoint"]
    assert "the agent reports the endpoint down" in str(healed["event"])
    print(f"heal after an endpoint on another node was killed: {took * 1000:.0f} ms from fault to restored ping")
    keeper.stop()
    assert links(client) == ["lo"]


def test_heal_across_nodes_when_the_endpoint_node_is_cut_off(bed: Testbed) -> None:
    cluster = Cluster.build(bed, nodes=3)
    n1, n2, n3 = cluster.nodes
    bed.endpoint(cluster.pod(n2, "ep"), "ep-2", "svc", "10.93.0.0/24", n2.agent)
    bed.endpoint(cluster.pod(n3, "ep"), "ep-3", "svc", "10.94.0.0/24", n3.agent)
    client = cluster.pod(n1, "c1")
    keeper = keep(bed, n1.agent, client, "svc")
    first = wait_event(keeper, "connected")
    serving = n2 if first["endpoint"] == "ep-2" else n3
    n = len(events(keeper))
    fault_at = time.time()
    run("ip", "-n", serving.netns, "link", "set", "eth0", "down")  # the node drops off the underlay
    took, healed = time_to_ping(client, fault_at, keeper, n)
    assert healed["endpoint"] != first["endpoint"]
    print(f"heal after the endpoint's node dropped off: {took * 1000:.0f} ms from fault to restored ping")
    keeper.stop()


def test_control_plane_break_keeps_the_wire(bed: Testbed) -> None:
    """The agent restarts: the monitor stream breaks, the runtime asks again on the same path."""
    mesh = make_mesh(bed)
    bed.endpoint(bed.netns("ep"), "ep1", "svc", "10.95.0.0/24", mesh.agent)
    client = bed.netns("c1")
    keeper = keep(bed, mesh.agent, client, "svc")
    first = wait_event(keeper, "connected")
    n = len(events(keeper))
    agent = [p for p in bed.procs if p.name == "agent-node1"][-1]
    os.kill(agent.popen.pid, signal.SIGKILL)
    bed.agent(mesh.node, "node1", mesh.registry)
    healed = wait_event(keeper, "healed", n)
    assert "same path" in str(healed["event"])
    assert healed["endpoint"] == first["endpoint"] and healed["client_ips"] == first["client_ips"]
    keeper.stop()


@pytest.mark.timeout(900)  # twenty rounds of a two-node mesh, about 9 s each here
def test_after_a_nodes_loss_the_heal_is_a_local_wire_that_carries(bed: Testbed) -> None:
    """Node 2, serving the client over WireGuard, drops off the underlay (link down, its agent
    and endpoint killed) while an endpoint on the client's own node serves the same service.
    Twenty times: the heal goes to the local endpoint over a veth, and is reported only once
    the data plane answers."""
    for round_ in range(20):
        with Testbed() as tb:
            cluster = Cluster.build(tb, nodes=2, agent_args=["--remote-mechanisms", "WIREGUARD"])
            n1, n2 = cluster.nodes
            far, _ = tb.endpoint(cluster.pod(n2, "ep"), "ep-far", "svc", "10.94.0.0/24", n2.agent)
            pod = cluster.pod(n1, "c1")
            keeper = keep(tb, n1.agent, pod, "svc")
            first = wait_event(keeper, "connected")
            assert first["endpoint"] == "ep-far" and str(first["wire"]).startswith("WIREGUARD"), first
            tb.endpoint(cluster.pod(n1, "ep"), "ep-near", "svc", "10.95.0.0/24", n1.agent)
            n = len(events(keeper))
            run("ip", "-n", n2.netns, "link", "set", "eth0", "down")
            agent2 = next(p for p in tb.procs if p.name == "agent-node2")
            for proc in (agent2, far):
                os.kill(proc.popen.pid, signal.SIGKILL)
            healed = wait_event(keeper, "healed", n, timeout=20)
            where = f"round {round_ + 1}: {healed}"
            assert healed["endpoint"] == "ep-near" and healed["wire"] == "veth", where
            assert ping(pod, peer(healed), count=1, timeout=2), where


def test_a_heal_is_reported_only_once_the_far_end_answers(bed: Testbed) -> None:
    """The endpoint a heal goes to takes the Request but its pod answers no echo: that heal
    carries nothing, is said so, and is followed by another reselect; "healed" comes with the
    endpoint that answers."""
    mesh = make_mesh(bed)
    first_proc, _ = bed.endpoint(bed.netns("first"), "first", "svc", "10.96.0.0/24", mesh.agent)
    client = bed.netns("c1")
    keeper = keep(bed, mesh.agent, client, "svc")
    assert wait_event(keeper, "connected")["endpoint"] == "first"
    silent = bed.netns("silent")
    run("ip", "netns", "exec", silent, "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1")
    bed.endpoint(silent, "silent", "svc", "10.97.0.0/24", mesh.agent)
    n = len(events(keeper))
    os.kill(first_proc.popen.pid, signal.SIGKILL)
    nothing = wait_event(keeper, "carries nothing", n)
    assert nothing["endpoint"] == "silent"
    assert not any("healed" in str(e["event"]) for e in events(keeper)[n:])
    bed.endpoint(bed.netns("answers"), "answers", "svc", "10.98.0.0/24", mesh.agent)
    healed = wait_event(keeper, "healed", n, timeout=20)
    assert healed["endpoint"] == "answers" and ping(client, peer(healed), count=1, timeout=2), healed


@pytest.mark.parametrize("fault", ["interface-down", "interface-deleted", "endpoint-killed"])
def test_heal_while_every_core_is_busy(bed: Testbed, fault: str) -> None:
    """Hog processes at the agent's nice level keep every core busy; the wire still heals: an
    interface deleted or set down is rebuilt by the agent (it follows the kernel's link
    events), an endpoint killed is left by the client for the other one."""
    mesh = make_mesh(bed)
    procs = {
        name: bed.endpoint(bed.netns(name), name, "svc", cidr, mesh.agent)[0]
        for name, cidr in (("ep1", "10.91.0.0/24"), ("ep2", "10.92.0.0/24"))
    }
    client = bed.netns("c1")
    keeper = keep(bed, mesh.agent, client, "svc")
    first = wait_event(keeper, "connected")
    hogs = [bed.start(f"hog{i}", ["sh", "-c", "while :; do :; done"]) for i in range(os.cpu_count() or 2)]
    try:
        n = len(events(keeper))
        if fault == "interface-down":
            run("ip", "-n", client, "link", "set", "nsm-1", "down")
        elif fault == "interface-deleted":
            run("ip", "-n", client, "link", "del", "nsm-1")
        else:
            os.kill(procs[str(first["endpoint"])].popen.pid, signal.SIGKILL)
        if fault == "endpoint-killed":
            healed = wait_event(keeper, "healed", n, timeout=20)
            assert healed["interface"] == "nsm-1"
            assert ping(client, peer(healed), count=1, timeout=2), healed
        else:
            bed.wait_for(mesh.agent_proc, "wire repaired", timeout=20)
            deadline = time.monotonic() + 20
            while not ping(client, peer(first), count=1, timeout=1):
                assert time.monotonic() < deadline, f"no ping after the agent repaired the wire ({fault})"
    finally:
        for hog in hogs:
            hog.stop(signal.SIGKILL)
