"""Through NAT (testbed/clusters.py NAT mode: both clusters masqueraded, no tunnel port
forwarded, a relay on a public node of cluster1), against WireGuard punched by hand between
the same two nodes: wireguard-go on each, pointed at the other's router at the port its NAT
keeps, the far side configured first so that its packet opens the hole the near side's
handshake comes through.

- first ping: from the Request (the mesh) or the first `wg set` (by hand) to the first echo
  answered over the tunnel;
- recovery: both routers' conntrack flushed under a 10 ms ping: the time lost (by hand, the
  far side sends nothing until its next keepalive, up to 25 s: the hole toward the near side
  stays shut until then, and the loss fills the window measured);
- relayed: from the Request (both routers symmetric) to WireGuard's endpoint on the relay,
  and to the first echo (the peer, made anew on the relay, handshakes at once);
- throughput: iperf3 through the mesh, direct and relayed (both routers symmetric), against
  the hand-punched pair node to node (direct, and no VXLAN inside: what the relay and the
  mesh's inner VXLAN cost shows);
- heals across domains through NAT: the serving endpoint killed (fault to the first ping
  answered by the other), pings lost while either agent is killed and restarted, and
  while the far domain's registry is killed and restarted (then the time until a new
  Request is served again).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import time
from dataclasses import dataclass

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bench.throughput import iperf
from nsm_client.runtime import AgentClient, kernel_request
from nsm_common.urls import parse_address
from testbed.bed import Proc, Testbed, ping, run
from testbed.clusters import DomainNode, Federation, public_ip
from testbed.keeper import events, keep, peer, wait_event

POOL = "10.160.0.0/16"
HAND_PORT = 51830  # not the agents': their devices may be up on the same nodes
HAND_INNER = ("10.161.0.1", "10.161.0.2")  # the far node's, the near node's
FAR = HAND_INNER[0]
WG_ARGS = ["--remote-mechanisms", "WIREGUARD"]
WINDOW = 5  # seconds of pings after a flush


def build(bed: Testbed, symmetric: bool = False, nodes: int = 1) -> tuple[Federation, DomainNode, DomainNode]:
    fed = Federation.build(bed, clusters=2, nodes=nodes, agent_args=WG_ARGS, nat=True, symmetric=symmetric)
    fed.add_public_node(fed.domain("cluster1"), ["--relay", *WG_ARGS])
    return fed, fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes[0]


def _first_answer(netns: str, address: str, deadline: float = 20) -> None:
    """Returns once one echo to ADDRESS is answered (one every 10 ms meanwhile). Asked again
    while the deadline lasts: ping gives up early when the neighbour inside (the VXLAN in the
    tunnel) is not resolved within 3 s, as while a path is still punching, or a relayed
    handshake was lost and WireGuard retries it 5 s later."""
    end = time.monotonic() + deadline
    while True:
        left = end - time.monotonic()
        argv = ["ping", "-i", "0.01", "-c", "1", "-w", f"{max(1, int(left))}", address]
        res = run("ip", "netns", "exec", netns, *argv, check=False)
        if res.returncode == 0:
            return
        if time.monotonic() >= end:
            raise RuntimeError(f"no answer from {address}: {res.stdout}")


def _lost_ms(proc: Proc) -> float:
    proc.popen.wait(60)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", proc.output())
    if not m:
        raise RuntimeError(proc.output())
    return (int(m.group(1)) - int(m.group(2))) * 10.0


def _pinger(bed: Testbed, netns: str, address: str, seconds: float) -> Proc:
    argv = ["ping", "-i", "0.01", "-c", str(int(seconds * 100)), "-W", "1", address]
    return bed.start(f"ping-{netns}-{address}", argv, netns=netns)


def _key() -> tuple[str, str]:
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pub = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode(), base64.b64encode(pub).decode()


@dataclass
class HandPair:
    took: float  # seconds from the first `wg set` to the first answered echo


def hand_punched(bed: Testbed, fed: Federation, here: DomainNode, there: DomainNode) -> HandPair:
    """wireguard-go on both nodes, each pointed at the other's router; the far side first."""
    nodes = (there, here)
    keys = [_key() for _ in nodes]
    for i, node in enumerate(nodes):
        (bed.dir / f"wgn{i}.key").write_text(keys[i][0])
        bed.start(f"wgn{i}", ["wireguard-go", "-f", f"wgn{i}"], netns=node.netns, env={"WG_PROCESS_FOREGROUND": "1"})
    for i, node in enumerate(nodes):
        while f"wgn{i}" not in run("ip", "-n", node.netns, "-o", "link").stdout:
            time.sleep(0.005)
        while not os.path.exists(f"/var/run/wireguard/wgn{i}.sock"):
            time.sleep(0.005)
        run("ip", "-n", node.netns, "addr", "add", f"{HAND_INNER[i]}/24", "dev", f"wgn{i}")
        run("ip", "-n", node.netns, "link", "set", f"wgn{i}", "mtu", "1420", "up")
    routers = {there.name: public_ip(2, 0), here.name: public_ip(1, 0)}
    start = time.perf_counter()
    for i, node in enumerate(nodes):
        other = nodes[1 - i]
        run("ip", "netns", "exec", node.netns, "wg", "set", f"wgn{i}", "private-key", str(bed.dir / f"wgn{i}.key"),
            "listen-port", str(HAND_PORT), "peer", keys[1 - i][1], "endpoint", f"{routers[other.name]}:{HAND_PORT}",
            "allowed-ips", f"{HAND_INNER[1 - i]}/32", "persistent-keepalive", "25")  # fmt: skip
    _first_answer(here.netns, FAR)
    return HandPair(time.perf_counter() - start)


def first_ping(bed: Testbed, rounds: int) -> dict[str, list[float]]:
    """Each round a fresh bed: the mesh's first connection of the node pair, then by hand."""
    mesh, hand = [], []
    for r in range(rounds):
        with Testbed(prefix=f"{bed.prefix}f{r}") as sub:
            fed, here, there = build(sub)
            sub.endpoint(fed.pod(there, "ep"), "ep-n", "svc", POOL, there.agent)
            pod = fed.pod(here, "c")
            client = AgentClient(parse_address(here.agent), timeout=30)
            start = time.perf_counter()
            conn = client.request(kernel_request(f"/var/run/netns/{pod}", "svc@cluster2", "nsm-1"))
            _first_answer(pod, conn.context.ip_context.dst_ip_addrs[0].split("/")[0])
            mesh.append(time.perf_counter() - start)
            client.close_channel()
            hand.append(hand_punched(sub, fed, here, there).took)
    return {"mesh": mesh, "hand": hand}


def recovery(bed: Testbed) -> dict[str, float]:
    """Both routers' conntrack flushed under a 10 ms ping, through the mesh and by hand."""
    fed, here, there = build(bed)
    bed.endpoint(fed.pod(there, "ep"), "ep-r", "svc", POOL, there.agent)
    pod = fed.pod(here, "c")
    conn = AgentClient(parse_address(here.agent)).request(
        kernel_request(f"/var/run/netns/{pod}", "svc@cluster2", "nsm-1")
    )
    address = conn.context.ip_context.dst_ip_addrs[0].split("/")[0]
    _first_answer(pod, address)
    out = {}
    for name in ("mesh", "hand"):
        if name == "hand":  # punched after the mesh's flush, which it would not have survived
            hand_punched(bed, fed, here, there)
        netns, target = (pod, address) if name == "mesh" else (here.netns, FAR)
        proc = _pinger(bed, netns, target, WINDOW + 1)
        time.sleep(1)
        for domain in fed.domains:
            fed.flush_conntrack(domain)
        out[f"{name}_lost_ms"] = _lost_ms(proc)
    out["window_ms"] = WINDOW * 1000.0
    return out


def throughput(bed: Testbed, seconds: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for mode, symmetric in (("direct", False), ("relayed", True)):
        with Testbed(prefix=f"{bed.prefix}{mode[0]}") as sub:
            fed, here, there = build(sub, symmetric=symmetric)
            ep, pod = fed.pod(there, "ep"), fed.pod(here, "c")
            sub.endpoint(ep, "tp-n", "tp", POOL, there.agent)
            start = time.monotonic()
            conn = AgentClient(parse_address(here.agent)).request(
                kernel_request(f"/var/run/netns/{pod}", "tp@cluster2", "nsm-1")
            )
            address = conn.context.ip_context.dst_ip_addrs[0].split("/")[0]
            if symmetric:  # relayed once the punch gave up
                relay = f"{fed.domain('cluster1').public_nodes[0].public_ip}:51800"
                deadline = time.monotonic() + 20
                while relay not in run("ip", "netns", "exec", here.netns, "wg", "show", "all", "endpoints").stdout:
                    if time.monotonic() > deadline:
                        raise RuntimeError("never relayed")
                    time.sleep(0.05)
                out["relayed_endpoint_s"] = time.monotonic() - start
            _first_answer(pod, address)
            if symmetric:
                out["relayed_first_s"] = time.monotonic() - start
            out[f"{mode}_gbps"] = iperf(sub, pod, ep, address, seconds)
            if not symmetric:
                hand_punched(sub, fed, here, there)
                out["hand_gbps"] = iperf(sub, here.netns, there.netns, FAR, seconds)
    out["direct_ratio"] = out["direct_gbps"] / out["hand_gbps"]
    out["relayed_ratio"] = out["relayed_gbps"] / out["hand_gbps"]
    return out


def heals(bed: Testbed) -> dict[str, float]:
    """Point 4's heals through NAT: an endpoint killed (seconds to the other's first answer),
    pings lost at 10 ms while the far, then the near, agent is killed -9 and restarted, and
    while the far domain's registry is (the data path needs none), with the time from its
    restart to a new Request served."""
    fed = Federation.build(bed, clusters=2, nodes=2, agent_args=WG_ARGS, nat=True)
    fed.add_public_node(fed.domain("cluster1"), ["--relay", *WG_ARGS])
    here, far = fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes
    procs = {f"ep{i}@cluster2": bed.endpoint(fed.pod(n, "ep"), f"ep{i}", "svc", f"10.17{i}.0.0/24", n.agent)[0]
             for i, n in enumerate(far, start=1)}  # fmt: skip
    pod = fed.pod(here, "c")
    keeper = keep(bed, here.agent, pod, "svc@cluster2")
    first = wait_event(keeper, "connected")
    out: dict[str, float] = {}
    serving = str(first["endpoint"])
    remaining = far[1] if serving == "ep1@cluster2" else far[0]
    seen = len(events(keeper))
    fault = time.monotonic()
    os.kill(procs[serving].popen.pid, signal.SIGKILL)
    healed = wait_event(keeper, "healed", seen, timeout=30)
    while not ping(pod, peer(healed), count=1, timeout=1):
        if time.monotonic() - fault > 30:
            raise RuntimeError("no ping after healing")
    out["endpoint_killed_s"] = time.monotonic() - fault
    for name, node in (("far", remaining), ("near", here)):
        agent = bed.live(f"agent-{node.name}")
        proc = _pinger(bed, pod, peer(healed), 5)
        time.sleep(1)
        os.kill(agent.popen.pid, signal.SIGKILL)
        agent.popen.wait(5)
        bed.restart(agent, "agent serving")
        out[f"{name}_agent_killed_lost_ms"] = _lost_ms(proc)
    registry = bed.live("registry-cluster2")
    proc = _pinger(bed, pod, peer(healed), 5)
    time.sleep(1)
    registry.stop(signal.SIGKILL)
    time.sleep(2)
    restarted = time.monotonic()
    bed.restart(registry, "registry serving")
    out["far_registry_killed_lost_ms"] = _lost_ms(proc)
    out["far_registry_back_s"] = _served_again(bed, fed, here, restarted)
    keeper.stop()
    return out


def _served_again(bed: Testbed, fed: Federation, here: DomainNode, since: float) -> float:
    """Seconds from SINCE until a new Request for svc@cluster2 is answered (the far endpoints
    registered again with the restarted registry, at their next renewal)."""
    pod = fed.pod(here, "again")
    client = AgentClient(parse_address(here.agent), timeout=10)
    try:
        while True:
            try:
                client.request(kernel_request(f"/var/run/netns/{pod}", "svc@cluster2", "nsm-1"))
                return time.monotonic() - since
            except grpc.RpcError:
                if time.monotonic() - since > 60:
                    raise
                time.sleep(0.2)
    finally:
        client.close_channel()


def run_all(bed: Testbed, quick: bool) -> dict[str, object]:
    got: dict[str, object] = {"first_ping": first_ping(bed, 2 if quick else 5)}
    with Testbed(prefix=bed.prefix + "r") as sub:
        got["recovery"] = recovery(sub)
    got["throughput"] = throughput(bed, 3 if quick else 10)
    with Testbed(prefix=bed.prefix + "h") as sub:
        got["heals"] = heals(sub)
    return got


if __name__ == "__main__":
    with Testbed() as b:
        print(json.dumps(run_all(b, quick=True), indent=1))
