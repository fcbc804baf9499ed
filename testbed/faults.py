"""Seeded fault injection against a two-node mesh.

    python -m testbed.faults --seed 7 --ops 1000

Random but replayable (the same seed gives the same schedule) interleavings of
connect, refresh, close, endpoint kill and restart, agent `kill -9` and restart
(the client's node or the endpoint's), registry `kill -9` and restart (its memory
store starts empty), a full restart (registry and every agent at once), an
interface deleted or set down in a pod, a node's reboot (its processes killed,
its pods' namespaces replaced by empty ones, a new boot id), a CPU hog on every
core for a while, and underlay link down and up. Then it quiesces (links up, endpoints back,
every connection refreshed, or reselected where its endpoint is gone) and checks
the invariant: what the kernel has equals what the agents report equals what the
endpoints hold and the journals say; no leaked interface, process or registry
entry; every surviving client pings its endpoint. Prints the violations (none
expected) and exits non-zero when there are any.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field

import grpc

from nsm_agent.state.journal import read_log
from nsm_api.connection_pb2 import RESELECT_REQUESTED, Connection
from nsm_client.runtime import AgentClient, kernel_request
from nsm_common.chain.path import DEFAULT_LIFETIME
from nsm_common.urls import parse_address
from testbed.bed import Proc, Testbed, links, ping, run
from testbed.cluster import Cluster, Node

SERVICE = "svc"


@dataclass
class Endpoint:
    name: str
    node: Node
    pod: str
    cidr: str
    proc: Proc | None = None


@dataclass
class World:
    bed: Testbed
    cluster: Cluster
    endpoints: list[Endpoint]
    pods: dict[str, Node]  # client pod -> its node
    conns: dict[str, Connection] = field(default_factory=dict)  # client pod -> connection
    log: list[str] = field(default_factory=list)

    def client(self, node: Node) -> AgentClient:
        return AgentClient(parse_address(node.agent), timeout=10)

    def agent_proc(self, node: Node) -> Proc:
        return [p for p in self.bed.procs if p.name == f"agent-{node.name}" and p.alive()][-1]


def build(bed: Testbed) -> World:
    # Registrations renewed every 2 s: a restarted registry is full again within that.
    cluster = Cluster.build(bed, nodes=0, registry_args=["--max-expiration", str(REGISTRATION)])
    n1 = cluster.add_node(1, AGENT_ARGS[1])
    n2 = cluster.add_node(2, AGENT_ARGS[2])
    endpoints = [
        Endpoint("ep-a", n1, cluster.pod(n1, "ep-a"), "10.97.0.0/24"),
        Endpoint("ep-b", n2, cluster.pod(n2, "ep-b"), "10.98.0.0/24"),
    ]
    for ep in endpoints:
        start_endpoint(bed, ep)
    pods = {cluster.pod(node, f"c{i}"): node for node in (n1, n2) for i in range(3)}
    return World(bed, cluster, endpoints, pods)


# Short lifetimes: what a failed best-effort Close leaves at a peer that was
# restarting at that moment expires, as designed, within the quiesce period.
LIFETIME = 4.0
REGISTRATION = 6.0
# Longest a Close or Request the client gave up on may still take at the agents: the
# request timeout for each of two hops, twice (a retry on a fresh channel).
SETTLE = 25.0
LIFETIMES = ["--default-lifetime", str(LIFETIME), "--max-lifetime", str(LIFETIME)]
AGENT_ARGS = {
    1: ["--remote-mechanisms", "VXLAN", *LIFETIMES],
    2: ["--remote-mechanisms", "WIREGUARD,VXLAN", *LIFETIMES],
}


def start_endpoint(bed: Testbed, ep: Endpoint) -> None:
    ep.proc, _ = bed.endpoint(ep.pod, ep.name, SERVICE, ep.cidr, ep.node.agent, extra=["--lifetime", str(LIFETIME)])


def restart_agent(world: World, node: Node) -> None:
    proc = world.agent_proc(node)
    os.kill(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait(5)
    start_agent(world, node)


def start_agent(world: World, node: Node) -> None:
    i = int(node.name.removeprefix("node"))
    host = node.tunnel_ip
    world.bed.agent(node.netns, node.name, world.cluster.registry_tcp,
                    extra=["--listen", f"tcp://{host}:5001", "--tunnel-ip", host, *AGENT_ARGS[i]])  # fmt: skip


def request(world: World, pod: str, reselect: bool = False) -> None:
    node = world.pods[pod]
    client = world.client(node)
    try:
        req = kernel_request(f"/var/run/netns/{pod}", SERVICE, "nsm-1")
        if pod in world.conns:
            req.connection.CopyFrom(world.conns[pod])
            # Each hop stamps its own segment: the client asks for a new lifetime.
            req.connection.path.path_segments[0].expires.FromSeconds(int(time.time() + DEFAULT_LIFETIME))
            if reselect:
                req.connection.state = RESELECT_REQUESTED
        world.conns[pod] = client.request(req)
    finally:
        client.close_channel()


def close(world: World, pod: str) -> None:
    client = world.client(world.pods[pod])
    try:
        client.close(world.conns.pop(pod))
    finally:
        client.close_channel()


KINDS = ["connect", "refresh", "close", "kill-endpoint", "restart-endpoint", "restart-agent", "link-flap",
         "restart-registry", "full-restart", "break-interface", "reboot-node", "cpu-hog"]  # fmt: skip
WEIGHTS = [30, 15, 20, 8, 8, 8, 6, 3, 2, 6, 2, 3]


def restart_registry(world: World) -> None:
    world.cluster.restart_registry()


def full_restart(world: World) -> None:
    """Registry and every agent killed together and started again (the endpoints stay, as pods do)."""
    world.cluster.restart_registry()
    for node in world.cluster.nodes:
        restart_agent(world, node)


def break_interface(world: World, rng: random.Random) -> str:
    used = sorted(world.conns)
    if not used:
        return "break-interface: nothing connected"
    pod = rng.choice(used)
    how = rng.choice(["del", "down"])
    # The client may hold a connection its agent has dropped meanwhile (no interface): as in life.
    done = run("ip", "-n", pod, "link", *(["del", "nsm-1"] if how == "del" else ["set", "nsm-1", "down"]), check=False)
    return f"break-interface {pod} {how}" + ("" if done.returncode == 0 else ": no interface")


def reboot_node(world: World, node: Node) -> None:
    """What the agent finds after a reboot: its node's processes gone, the pods' namespaces new
    and empty (their clients start again with no connection), another boot id."""
    agent = world.agent_proc(node)
    os.kill(agent.popen.pid, signal.SIGKILL)
    agent.popen.wait(5)
    for ep in world.endpoints:
        if ep.node is node and ep.proc is not None and ep.proc.alive():
            os.kill(ep.proc.popen.pid, signal.SIGKILL)
            ep.proc.popen.wait(5)
    pods = [p for p, n in world.pods.items() if n is node] + [e.pod for e in world.endpoints if e.node is node]
    for pod in pods:
        run("ip", "netns", "del", pod)
        run("ip", "netns", "add", pod)
        run("ip", "-n", pod, "link", "set", "lo", "up")
        world.conns.pop(pod, None)
    (world.bed.dir / f"{node.name}-state" / "boot_id").write_text("rebooted-in-the-fault-run\n")
    start_agent(world, node)
    for ep in world.endpoints:
        if ep.node is node:
            start_endpoint(world.bed, ep)


def cpu_hog(world: World, rng: random.Random) -> str:
    seconds = round(rng.uniform(1, 4), 1)
    for i in range(os.cpu_count() or 2):
        world.bed.start(f"hog{i}", ["timeout", str(seconds), "sh", "-c", "while :; do :; done"])
    return f"cpu-hog {seconds} s"


def step(world: World, rng: random.Random) -> str:
    kind = rng.choices(KINDS, weights=WEIGHTS)[0]
    pods = sorted(world.pods)
    if kind == "connect":
        free = [p for p in pods if p not in world.conns]
        if not free:
            return "connect: no free pod"
        pod = rng.choice(free)
        return _try(f"connect {pod}", lambda: request(world, pod))
    if kind in ("refresh", "close"):
        used = sorted(world.conns)
        if not used:
            return f"{kind}: nothing connected"
        pod = rng.choice(used)
        return _try(f"{kind} {pod}", lambda: request(world, pod) if kind == "refresh" else close(world, pod))
    if kind == "kill-endpoint":
        alive = [e for e in world.endpoints if e.proc is not None and e.proc.alive()]
        if not alive:
            return "kill-endpoint: none alive"
        ep = rng.choice(alive)
        assert ep.proc is not None
        os.kill(ep.proc.popen.pid, signal.SIGKILL)
        ep.proc.popen.wait(5)
        return f"kill-endpoint {ep.name}"
    if kind == "restart-endpoint":
        dead = [e for e in world.endpoints if e.proc is None or not e.proc.alive()]
        if not dead:
            return "restart-endpoint: none dead"
        ep = rng.choice(dead)
        start_endpoint(world.bed, ep)
        return f"restart-endpoint {ep.name}"
    if kind == "restart-registry":
        restart_registry(world)
        return kind
    if kind == "full-restart":
        full_restart(world)
        return kind
    if kind == "break-interface":
        return break_interface(world, rng)
    if kind == "cpu-hog":
        return cpu_hog(world, rng)
    node = rng.choice(world.cluster.nodes)
    if kind == "restart-agent":
        restart_agent(world, node)
        return f"restart-agent {node.name}"
    if kind == "reboot-node":
        reboot_node(world, node)
        return f"reboot-node {node.name}"
    run("ip", "-n", node.netns, "link", "set", "eth0", "down")
    time.sleep(rng.uniform(0.05, 0.3))
    run("ip", "-n", node.netns, "link", "set", "eth0", "up")
    return f"link-flap {node.name}"


def _try(what: str, fn: object, detail: bool = False) -> str:
    try:
        fn()  # type: ignore[operator]
        return what
    except grpc.RpcError as exc:
        more = f" {exc.details()}" if detail else ""  # type: ignore[attr-defined]
        return f"{what}: {exc.code().name}{more}"  # type: ignore[attr-defined]


def quiesce(world: World) -> None:
    """Links up, endpoints back, orphans expired, every connection refreshed (or reselected)."""
    for ep in world.endpoints:
        if ep.proc is None or not ep.proc.alive():
            start_endpoint(world.bed, ep)
    for node in world.cluster.nodes:
        run("ip", "-n", node.netns, "link", "set", "eth0", "up")
    # A registry restarted last is full again once every endpoint has renewed. The clients
    # refresh meanwhile: the wait (up to REGISTRATION) is longer than a LIFETIME, and a
    # connection its client stops refreshing rightly expires at every hop.
    deadline = time.monotonic() + REGISTRATION
    refreshed = time.monotonic()
    while time.monotonic() < deadline and not _all_registered(world):
        if time.monotonic() - refreshed > LIFETIME / 4:
            _refresh_all(world)
            refreshed = time.monotonic()
        time.sleep(0.2)
    # Orphans expire; the connections the clients hold are refreshed meanwhile.
    until = time.monotonic() + LIFETIME + 1.5
    while time.monotonic() < until:
        _refresh_all(world)
        time.sleep(LIFETIME / 4)
    _refresh_all(world)


def _all_registered(world: World) -> bool:
    listed = world.bed.nsmctl("get", "endpoints", "--agent", world.cluster.nodes[0].agent, check=False).stdout
    return all(ep.name in listed for ep in world.endpoints)


def _refresh_all(world: World) -> None:
    for pod in sorted(world.conns):
        peer = world.conns[pod].context.ip_context.dst_ip_addrs[0].split("/")[0]
        refreshed = _try("refresh", lambda pod=pod: request(world, pod), detail=True)
        if refreshed == "refresh" and ping(pod, peer, timeout=1):
            continue
        reselected = _try("reselect", lambda pod=pod: request(world, pod, reselect=True), detail=True)
        world.log.append(f"quiesce {pod}: {refreshed}; {reselected}")
        if reselected != "reselect":
            world.log.append(f"quiesce: {pod} could not be healed; closing it")
            world.log.append(_try("close", lambda pod=pod: close(world, pod), detail=True))


def check(world: World) -> list[str]:
    problems: list[str] = []
    reported: dict[str, Connection] = {}
    for node in world.cluster.nodes:
        client = world.client(node)
        try:
            for conn in client.connections().values():
                if conn.path.path_segments[0].name == "nsmctl":
                    reported[conn.path.path_segments[0].id] = conn
        finally:
            client.close_channel()
    ours = {c.path.path_segments[0].id: pod for pod, c in world.conns.items()}
    if set(reported) != set(ours):
        problems.append(f"agents report {sorted(reported)}, clients hold {sorted(ours)}")
    for pod in sorted(world.pods):
        want = ["lo", "nsm-1"] if pod in world.conns else ["lo"]
        if sorted(links(pod)) != want:
            problems.append(f"{pod} has {sorted(links(pod))}, expected {want}")
    for ep in world.endpoints:
        serving = [c for c in world.conns.values() if c.network_service_endpoint_name == ep.name]
        if len(links(ep.pod)) != 1 + len(serving):
            problems.append(f"{ep.pod} has {links(ep.pod)} for {len(serving)} connections")
        held = AgentClient(parse_address(f"unix://{world.bed.dir}/ep-{ep.name}.sock"), timeout=5)
        try:
            leases = len(held.connections())
        finally:
            held.close_channel()
        if leases != len(serving):
            problems.append(f"endpoint {ep.name} holds {leases} connections, {len(serving)} use it")
    for node in world.cluster.nodes:
        extra = [n for n in links(node.netns) if n not in ("lo", "eth0") and not n.startswith("nsmwg")]
        if extra:
            problems.append(f"{node.netns} has leftover links {extra}")
        entries = len(read_log(world.bed.dir / f"{node.name}-state" / "connections.log"))
        held_here = sum(1 for c in reported.values() if c.path.path_segments[1].name == node.name)
        remote_here = sum(
            1 for c in reported.values() if len(c.path.path_segments) > 3 and c.path.path_segments[2].name == node.name
        )
        if entries != held_here + remote_here:
            problems.append(f"{node.name} journal has {entries} entries for {held_here + remote_here} connections")
    registry = world.bed.nsmctl("get", "endpoints", "--agent", world.cluster.nodes[0].agent).stdout
    for ep in world.endpoints:
        if ep.name not in registry:
            problems.append(f"{ep.name} missing from the registry")
    for pod, conn in sorted(world.conns.items()):
        peer = conn.context.ip_context.dst_ip_addrs[0].split("/")[0]
        if not ping(pod, peer, count=2):
            problems.append(f"{pod} does not reach {conn.network_service_endpoint_name} at {peer}")
    return problems


def _agents(world: World) -> str:
    """Every agent process of the run, alive or how it ended, and the end of its log."""
    out = []
    for proc in world.bed.procs:
        if proc.name.startswith("agent-"):
            state = "alive" if proc.alive() else f"exited {proc.popen.returncode}"
            tail = "\n".join(proc.output().splitlines()[-25:])
            out.append(f"\n--- {proc.name} ({proc.log.name}, {state})\n{tail}")
    return "".join(out)


def run_faults(bed: Testbed, seed: int, ops: int, verbose: bool = False) -> tuple[list[str], list[str]]:
    """Returns (the schedule as run, the invariant's violations)."""
    rng = random.Random(seed)
    world = build(bed)
    for i in range(ops):
        try:
            done = step(world, rng)
        except Exception as exc:
            raise RuntimeError(f"operation {i} failed: {exc}\n" + "\n".join(world.log[-15:]) + _agents(world)) from exc
        world.log.append(f"{i:4d} {done}")
        if verbose:
            print(world.log[-1], flush=True)
    quiesce(world)
    # What a client gave up waiting for still runs to its end at the agents (a Close behind a
    # replay that waits for a rebooting peer can take two request timeouts): the invariant
    # must hold once that is done, so it is looked at again for a while before it counts.
    deadline = time.monotonic() + SETTLE
    problems = check(world)
    while problems and time.monotonic() < deadline:
        time.sleep(1.0)
        problems = check(world)
    if problems:
        problems.append("agent logs:" + _agents(world))
    return world.log, problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Seeded fault injection against a two-node mesh")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ops", type=int, default=200)
    args = p.parse_args(argv)
    bed = Testbed()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        started = time.monotonic()
        log, problems = run_faults(bed, args.seed, args.ops, verbose=True)
        print(f"{args.ops} operations, seed {args.seed}, {time.monotonic() - started:.0f} s")
        for line in log[args.ops :]:
            print(line)
        for problem in problems:
            print(f"VIOLATION: {problem}")
        print("invariant holds" if not problems else f"{len(problems)} violations")
        return 1 if problems else 0
    finally:
        bed.cleanup()


if __name__ == "__main__":
    sys.exit(main())
