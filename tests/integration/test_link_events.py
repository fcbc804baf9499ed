"""The agent follows the kernel's link events in the namespaces it serves (no client keeper
here: what heals, the agent heals): an interface of a connection deleted or set down by
someone else is rebuilt and the Monitor stream shows the repaired connection; a client pod's
namespace gone closes the connection (Monitor: deleted, nothing left at the endpoint); an
endpoint pod's namespace gone reports the connection DOWN."""

from __future__ import annotations

import queue
import signal
import threading
import time

import grpc
import pytest

from nsm_api import connection_pb2_grpc
from nsm_api.connection_pb2 import DELETE, DOWN, Connection, ConnectionEvent, MonitorScopeSelector, PathSegment
from nsm_client.runtime import AgentClient, kernel_request
from nsm_common.urls import parse_address
from testbed.bed import Testbed, links, ping, run
from testbed.cluster import Cluster
from tests.helpers.mesh import make_mesh


class MonitorLog:
    """Every Monitor event of one connection, with when it arrived (a thread reads the stream)."""

    def __init__(self, agent: str, conn: Connection) -> None:
        addr = parse_address(agent)
        self.channel = grpc.insecure_channel(addr.grpc_target)
        stub = connection_pb2_grpc.MonitorConnectionStub(self.channel)
        selector = MonitorScopeSelector(path_segments=[PathSegment(id=conn.path.path_segments[0].id)])
        self.stream = stub.MonitorConnections(selector)
        self.events: queue.Queue[tuple[float, ConnectionEvent]] = queue.Queue()
        first = next(iter(self.stream))  # the initial state: the stream is open before the fault
        assert first.connections
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                self.events.put((time.monotonic(), event))
        except grpc.RpcError:
            pass

    def next(self, timeout: float = 5) -> tuple[float, ConnectionEvent]:
        return self.events.get(timeout=timeout)

    def close(self) -> None:
        self.stream.cancel()
        self.channel.close()


def peer_ip(conn: Connection) -> str:
    return conn.context.ip_context.dst_ip_addrs[0].split("/")[0]


def wait_link(pod: str, name: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while name not in links(pod):
        assert time.monotonic() < deadline, f"{name} not back in {pod}: {links(pod)}"
        time.sleep(0.01)


def one_node_connection(bed: Testbed) -> tuple[str, str, str, AgentClient, Connection]:
    mesh = make_mesh(bed)
    ep = bed.netns("ep")
    bed.endpoint(ep, "ep1", "svc", "10.97.0.0/24", mesh.agent)
    pod = bed.netns("c1")
    client = AgentClient(parse_address(mesh.agent), timeout=10)
    conn = client.request(kernel_request(f"/var/run/netns/{pod}", "svc", "nsm-1"))
    assert ping(pod, peer_ip(conn))
    return mesh.agent, ep, pod, client, conn


@pytest.mark.parametrize("fault", ["client-deleted", "client-down", "endpoint-deleted", "endpoint-down"])
def test_a_broken_interface_is_rebuilt_at_once(bed: Testbed, fault: str) -> None:
    agent, ep, pod, client, conn = one_node_connection(bed)
    monitor = MonitorLog(agent, conn)
    ns, name = (pod, "nsm-1") if fault.startswith("client") else (ep, next(n for n in links(ep) if n != "lo"))
    t0 = time.monotonic()
    run(
        "ip",
        "-n",
        ns,
        "link",
        "del" if fault.endswith("deleted") else "set",
        name,
        *(["down"] if "down" in fault else []),
    )
    at, event = monitor.next()
    (repaired,) = event.connections.values()
    print(f"{fault}: Monitor update {1000 * (at - t0):.1f} ms after the fault")
    assert event.type != DELETE and repaired.state != DOWN
    wait_link(ns, name)
    assert ping(pod, peer_ip(repaired), count=1, timeout=2)
    monitor.close()
    client.close(repaired)
    assert links(pod) == ["lo"] and links(ep) == ["lo"]


def test_a_client_pod_gone_closes_its_connection(bed: Testbed) -> None:
    agent, ep, pod, _, conn = one_node_connection(bed)
    monitor = MonitorLog(agent, conn)
    t0 = time.monotonic()
    run("ip", "netns", "del", pod)
    bed.namespaces.remove(pod)
    at, event = monitor.next()
    print(f"client pod gone: Monitor delete {1000 * (at - t0):.1f} ms after")
    assert event.type == DELETE
    deadline = time.monotonic() + 5
    while links(ep) != ["lo"]:  # the endpoint's end went with the wire (its lease too)
        assert time.monotonic() < deadline, links(ep)
        time.sleep(0.02)
    monitor.close()


def test_an_endpoint_pod_gone_reports_the_connection_down(bed: Testbed) -> None:
    agent, ep, pod, client, conn = one_node_connection(bed)
    monitor = MonitorLog(agent, conn)
    run("ip", "netns", "del", ep)
    bed.namespaces.remove(ep)
    _, event = monitor.next()
    assert [c.state for c in event.connections.values()] == [DOWN]
    monitor.close()
    client.close(conn)
    assert links(pod) == ["lo"]


@pytest.mark.parametrize("side", ["client", "endpoint"])
def test_a_deleted_vxlan_device_is_rebuilt(bed: Testbed, side: str) -> None:
    cluster = Cluster.build(bed, nodes=2)
    n1, n2 = cluster.nodes
    ep = cluster.pod(n2, "ep")
    bed.endpoint(ep, "ep-2", "svc", "10.98.0.0/24", n2.agent)
    pod = cluster.pod(n1, "c1")
    client = AgentClient(parse_address(n1.agent), timeout=10)
    conn = client.request(kernel_request(f"/var/run/netns/{pod}", "svc", "nsm-1"))
    assert ping(pod, peer_ip(conn))
    ns = pod if side == "client" else ep  # the agent on that node rebuilds it
    name = "nsm-1" if side == "client" else next(n for n in links(ep) if n != "lo")
    run("ip", "-n", ns, "link", "del", name)
    wait_link(ns, name)
    deadline = time.monotonic() + 5
    while not ping(pod, peer_ip(conn), count=1, timeout=1):
        assert time.monotonic() < deadline, f"no ping after the {side}'s VXLAN device was rebuilt"
    client.close(conn)
    assert links(pod) == ["lo"]


def mac_of(ns: str, name: str) -> str:
    out = run("ip", "-n", ns, "-o", "link", "show", name).stdout
    return out.split("link/ether ", 1)[1].split()[0]


def test_a_device_deleted_while_its_agent_was_down_is_rebuilt_with_its_mac(bed: Testbed) -> None:
    """The endpoint side's VXLAN device goes while node 2's agent is down: the new agent's
    survey finds the wire broken and builds it again, with the MAC the journal holds (a new
    one would leave the client's neighbour entry pointing nowhere until ARP noticed)."""
    cluster = Cluster.build(bed, nodes=2, agent_args=["--remote-mechanisms", "VXLAN"])
    n1, n2 = cluster.nodes
    ep = cluster.pod(n2, "ep")
    bed.endpoint(ep, "ep-2", "svc", "10.98.1.0/24", n2.agent)
    pod = cluster.pod(n1, "c1")
    conn = AgentClient(parse_address(n1.agent), timeout=10).request(
        kernel_request(f"/var/run/netns/{pod}", "svc", "nsm-1")
    )
    assert ping(pod, peer_ip(conn))
    name = next(n for n in links(ep) if n != "lo")
    before = mac_of(ep, name)
    agent2 = next(p for p in bed.procs if p.name == "agent-node2" and p.alive())
    agent2.stop(signal.SIGKILL)
    run("ip", "-n", ep, "link", "del", name)
    args = ["--listen", f"tcp://{n2.tunnel_ip}:5001", "--tunnel-ip", n2.tunnel_ip, "--remote-mechanisms", "VXLAN"]
    new, _ = bed.agent(n2.netns, "node2", cluster.registry_tcp, extra=args)
    bed.wait_for(new, "carried on after restart")
    assert "rebuilt=1" in new.output()
    assert mac_of(ep, name) == before
    assert ping(pod, peer_ip(conn), count=1, timeout=2)
