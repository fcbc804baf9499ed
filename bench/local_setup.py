"""Target 1 (local KERNEL set-up) and 7 (close): the mesh against bare pyroute2 and CNI ptp."""

from __future__ import annotations

import json
import os
import subprocess
import time
from functools import partial

from pyroute2 import IPRoute

from nsm_api.connection_pb2 import Connection
from nsm_client.runtime import AgentClient, kernel_request
from nsm_common.netns import inside
from nsm_common.urls import parse_address
from testbed.bed import Testbed
from testbed.mesh import one_node

CNI = "/usr/lib/cni"


def connect_all(client: AgentClient, pods: list[str], service: str) -> tuple[list[float], list[Connection]]:
    """One connection into each pod, in turn: each one's set-up time, and the connections."""
    setup, conns = [], []
    for pod in pods:
        req = kernel_request(f"/var/run/netns/{pod}", service, "nsm-1")
        t = time.perf_counter()
        conns.append(client.request(req))
        setup.append(time.perf_counter() - t)
    return setup, conns


def close_all(client: AgentClient, conns: list[Connection]) -> list[float]:
    """Close each connection, in turn: each Close's time."""
    close = []
    for conn in conns:
        t = time.perf_counter()
        client.close(conn)
        close.append(time.perf_counter() - t)
    return close


def mesh(bed: Testbed, n: int) -> tuple[list[float], list[float]]:
    """Set-up and close times of `n` veth connections, each into a pod of its own."""
    agent = one_node(bed).agent
    bed.endpoint(bed.netns("ep"), "ep1", "bench", "10.120.0.0/16", agent)
    pods = [bed.netns(f"m{i}") for i in range(n)]
    client = AgentClient(parse_address(agent), timeout=30)
    warm = client.request(kernel_request(f"/var/run/netns/{bed.netns('warm')}", "bench", "nsm-1"))
    setup, conns = connect_all(client, pods, "bench")
    close = close_all(client, [*conns, warm])
    client.close_channel()
    return setup, close[:-1]


def bare(bed: Testbed, n: int) -> tuple[list[float], list[float]]:
    """The same veth, addresses, routes with plain pyroute2 calls: the endpoint's
    socket open beforehand, each pod's opened once (as the agent does)."""
    ep_path = f"/var/run/netns/{bed.netns('bare-ep')}"
    pods = [f"/var/run/netns/{bed.netns(f'b{i}')}" for i in range(n)]
    ep = inside(ep_path, IPRoute)
    setup, close, made = [], [], []
    for i, pod_path in enumerate(pods):
        t = time.perf_counter()
        pod = inside(pod_path, IPRoute)
        fd = os.open(ep_path, os.O_RDONLY)
        pod.link("add", ifname="nsm-1", kind="veth", peer={"ifname": f"e{i}", "net_ns_fd": fd})
        os.close(fd)
        pi, ei = pod.link_lookup(ifname="nsm-1")[0], ep.link_lookup(ifname=f"e{i}")[0]
        a, b = f"10.121.{i // 100}.{2 * (i % 100) + 1}", f"10.121.{i // 100}.{2 * (i % 100) + 2}"
        pod.addr("add", index=pi, address=b, prefixlen=32)
        ep.addr("add", index=ei, address=a, prefixlen=32)
        pod.link("set", index=pi, state="up")
        ep.link("set", index=ei, state="up")
        pod.route("replace", dst=f"{a}/32", oif=pi, scope=253)
        ep.route("replace", dst=f"{b}/32", oif=ei, scope=253)
        setup.append(time.perf_counter() - t)
        made.append((pod, pi))
    for pod, pi in made:
        t = time.perf_counter()
        pod.link("del", index=pi)
        close.append(time.perf_counter() - t)
        pod.close()
    ep.close()
    return setup, close


def cni_ptp(bed: Testbed, n: int) -> list[float]:
    """The CNI ptp plugin giving `n` namespaces a veth, exec'd as a runtime does (one
    spawn each), from inside a namespace of ours: ptp puts its host end and routes
    where it runs."""
    node = f"/var/run/netns/{bed.netns('cni-node')}"
    data = bed.dir / "cni-ipam"
    conf = json.dumps({"cniVersion": "1.0.0", "name": "bench", "type": "ptp",
                       "ipam": {"type": "host-local", "subnet": "10.122.0.0/16", "dataDir": str(data)}})  # fmt: skip
    took = []
    for i in range(n):
        pod = bed.netns(f"c{i}")
        env = {**os.environ, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"bench{i}", "CNI_NETNS": f"/var/run/netns/{pod}",
               "CNI_IFNAME": "eth0", "CNI_PATH": CNI}  # fmt: skip
        t = time.perf_counter()
        ptp = partial(subprocess.run, [f"{CNI}/ptp"], input=conf, env=env, capture_output=True, text=True)
        res = inside(node, ptp)
        took.append(time.perf_counter() - t)
        if res.returncode != 0:
            raise RuntimeError(f"ptp failed: {res.stdout}{res.stderr}")
    return took
