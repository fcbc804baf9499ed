"""The benchmark suite: every figure a ratio to a baseline measured in the same run.

    ./scripts/bench [--quick]      (python -m bench.suite)

Writes bench/results/report.md, report.json and PNG plots. Covered so far
(issue 7 is open): local set-up (1) against bare pyroute2 and the CNI ptp plugin,
close (7) against bare pyroute2 deletes, throughput (4) through a mesh veth and a
mesh VXLAN against hand-built ones, and probing cost. Everything runs in
namespaces this run creates and removes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netns import setns

from nsm_agent.client.runtime import AgentClient, kernel_request
from nsm_common.urls import parse_address
from testbed.bed import Testbed, run
from testbed.cluster import Cluster

RESULTS = Path(__file__).resolve().parent / "results"
CNI = "/usr/lib/cni"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": pct(values, 50) * 1000,
        "p99_ms": pct(values, 99) * 1000,
        "mean_ms": statistics.mean(values) * 1000,
    }


def open_in(path: str) -> IPRoute:
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        setns(target, flags=0)
        return IPRoute()
    finally:
        setns(home, flags=0)
        os.close(target)
        os.close(home)


def mesh_setup_and_close(bed: Testbed, n: int) -> tuple[list[float], list[float]]:
    node = bed.netns("node")
    _, registry = bed.registry(node)
    _, agent = bed.agent(node, "node1", registry)
    bed.endpoint(bed.netns("ep"), "ep1", "bench", "10.120.0.0/16", agent)
    pods = [bed.netns(f"m{i}") for i in range(n)]
    client = AgentClient(parse_address(agent), timeout=30)
    client.request(kernel_request(f"/var/run/netns/{bed.netns('warm')}", "bench", "nsm-1"))  # channels warm
    setup, conns = [], []
    for pod in pods:
        req = kernel_request(f"/var/run/netns/{pod}", "bench", "nsm-1")
        t = time.perf_counter()
        conns.append(client.request(req))
        setup.append(time.perf_counter() - t)
    close = []
    for conn in conns:
        t = time.perf_counter()
        client.close(conn)
        close.append(time.perf_counter() - t)
    client.close_channel()
    return setup, close


def bare_setup_and_close(bed: Testbed, n: int) -> tuple[list[float], list[float]]:
    """The same veth, addresses, routes with bare pyroute2: endpoint socket open, each pod's opened once."""
    ep_path = f"/var/run/netns/{bed.netns('bare-ep')}"
    pods = [f"/var/run/netns/{bed.netns(f'b{i}')}" for i in range(n)]
    ep = open_in(ep_path)
    setup, close, made = [], [], []
    for i, pod_path in enumerate(pods):
        t = time.perf_counter()
        pod = open_in(pod_path)
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


def cni_ptp_setup(bed: Testbed, n: int) -> list[float]:
    node = bed.netns("cni-node")
    data = bed.dir / "cni-ipam"
    conf = json.dumps({"cniVersion": "1.0.0", "name": "bench", "type": "ptp",
                       "ipam": {"type": "host-local", "subnet": "10.122.0.0/16", "dataDir": str(data)}})  # fmt: skip
    took = []
    for i in range(n):
        pod = bed.netns(f"c{i}")
        env = {**os.environ, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"bench{i}", "CNI_NETNS": f"/var/run/netns/{pod}",
               "CNI_IFNAME": "eth0", "CNI_PATH": CNI}  # fmt: skip
        t = time.perf_counter()
        # Inside a namespace of ours: ptp puts its host end (and routes) where it runs.
        res = subprocess.run(["ip", "netns", "exec", node, f"{CNI}/ptp"], input=conf, env=env,
                             capture_output=True, text=True)  # fmt: skip
        took.append(time.perf_counter() - t)
        if res.returncode != 0:
            raise RuntimeError(f"ptp failed: {res.stdout}{res.stderr}")
    return took


def iperf(bed: Testbed, client_ns: str, server_ns: str, address: str, seconds: int) -> float:
    server = bed.start(f"iperf-{server_ns}", ["iperf3", "-s", "-1", "-B", address], netns=server_ns)
    time.sleep(0.5)
    out = run("ip", "netns", "exec", client_ns, "iperf3", "-c", address, "-t", str(seconds), "-J").stdout
    server.popen.wait(10)
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def throughput(bed: Testbed, seconds: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    # veth: through the mesh on one node, and a hand-built pair.
    node = bed.netns("tp-node")
    _, registry = bed.registry(node, name="tp-registry")
    _, agent = bed.agent(node, "tp", registry)
    ep = bed.netns("tp-ep")
    bed.endpoint(ep, "tp-ep", "tp", "10.123.0.0/24", agent)
    pod = bed.netns("tp-c")
    conn = AgentClient(parse_address(agent)).request(kernel_request(f"/var/run/netns/{pod}", "tp", "nsm-1"))
    mesh = iperf(bed, pod, ep, conn.context.ip_context.dst_ip_addrs[0].split("/")[0], seconds)
    a, b = bed.netns("tp-a"), bed.netns("tp-b")
    run("ip", "-n", a, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", b)
    run("ip", "-n", a, "addr", "add", "10.124.0.1/24", "dev", "v0")
    run("ip", "-n", b, "addr", "add", "10.124.0.2/24", "dev", "v1")
    run("ip", "-n", a, "link", "set", "v0", "up")
    run("ip", "-n", b, "link", "set", "v1", "up")
    bare = iperf(bed, a, b, "10.124.0.2", seconds)
    out["veth"] = {"mesh_gbps": mesh, "baseline_gbps": bare, "ratio": mesh / bare}
    # VXLAN between two nodes: through the mesh, and hand-built between the same nodes.
    cluster = Cluster.build(bed, nodes=2, agent_args=["--remote-mechanisms", "VXLAN"])
    n1, n2 = cluster.nodes
    ep2 = cluster.pod(n2, "ep")
    bed.endpoint(ep2, "vx-ep", "vx", "10.125.0.0/24", n2.agent)
    pod1 = cluster.pod(n1, "c")
    conn = AgentClient(parse_address(n1.agent)).request(kernel_request(f"/var/run/netns/{pod1}", "vx", "nsm-1"))
    mesh = iperf(bed, pod1, ep2, conn.context.ip_context.dst_ip_addrs[0].split("/")[0], seconds)
    for here, local, remote, addr in (
        (n1, n1.tunnel_ip, n2.tunnel_ip, "10.126.0.1"),
        (n2, n2.tunnel_ip, n1.tunnel_ip, "10.126.0.2"),
    ):
        run("ip", "-n", here.netns, "link", "add", "hvx", "type", "vxlan", "id", "4242", "local", local,
            "remote", remote, "dstport", "4790")  # fmt: skip
        run("ip", "-n", here.netns, "link", "set", "hvx", "mtu", "1450", "up")
        run("ip", "-n", here.netns, "addr", "add", f"{addr}/24", "dev", "hvx")
    bare = iperf(bed, n1.netns, n2.netns, "10.126.0.2", seconds)
    out["vxlan"] = {"mesh_gbps": mesh, "baseline_gbps": bare, "ratio": mesh / bare}
    return out


def plots(data: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for key, label in (
        ("mesh_setup", "mesh (agent Request)"),
        ("bare_setup", "bare pyroute2"),
        ("cni_setup", "CNI ptp"),
    ):
        ax.plot([x * 1000 for x in data["raw"][key]], label=label, linewidth=1)
    ax.set_xlabel("connection #")
    ax.set_ylabel("set-up latency (ms)")
    ax.set_title("Local connection set-up, one after another")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "setup_latency.png", dpi=100)
    fig, ax = plt.subplots(figsize=(6, 4))
    kinds = list(data["throughput"])
    ax.bar([k + " mesh" for k in kinds], [data["throughput"][k]["mesh_gbps"] for k in kinds])
    ax.bar([k + " hand-built" for k in kinds], [data["throughput"][k]["baseline_gbps"] for k in kinds])
    ax.set_ylabel("Gbit/s (iperf3, TCP)")
    ax.set_title("Throughput through the mesh and hand-built links")
    fig.tight_layout()
    fig.savefig(RESULTS / "throughput.png", dpi=100)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer connections and shorter iperf3 runs")
    args = p.parse_args(argv)
    n, seconds = (50, 3) if args.quick else (200, 10)
    RESULTS.mkdir(exist_ok=True)
    with Testbed() as bed:
        mesh_setup, mesh_close = mesh_setup_and_close(bed, n)
        bare_setup, bare_close = bare_setup_and_close(bed, n)
        cni_setup = cni_ptp_setup(bed, n)
        tp = throughput(bed, seconds)
    data: dict[str, Any] = {
        "connections": n,
        "setup": {"mesh": summary(mesh_setup), "bare_pyroute2": summary(bare_setup), "cni_ptp": summary(cni_setup)},
        "close": {"mesh": summary(mesh_close), "bare_pyroute2": summary(bare_close)},
        "throughput": tp,
        "raw": {"mesh_setup": mesh_setup, "bare_setup": bare_setup, "cni_setup": cni_setup},
    }
    s, c = data["setup"], data["close"]
    mesh50, bare50, ptp50 = s["mesh"]["p50_ms"], s["bare_pyroute2"]["p50_ms"], s["cni_ptp"]["p50_ms"]
    mesh99, bare99 = s["mesh"]["p99_ms"], s["bare_pyroute2"]["p99_ms"]
    close50, bare_close50 = c["mesh"]["p50_ms"], c["bare_pyroute2"]["p50_ms"]
    rows = [
        ("1 local set-up p50", f"{mesh50:.2f} ms", f"bare {bare50:.2f} ms / ptp {ptp50:.2f} ms",
         f"{mesh50 / bare50:.2f}× bare, {mesh50 / ptp50:.2f}× ptp", "≤ 1.5× bare, < ptp"),
        ("1 local set-up p99", f"{mesh99:.2f} ms", f"bare {bare99:.2f} ms", f"{mesh99 / bare99:.2f}×", "—"),
        ("7 close p50", f"{close50:.2f} ms", f"bare {bare_close50:.2f} ms", f"{close50 / bare_close50:.2f}×", "≤ 1.5×"),
    ]  # fmt: skip
    for kind, t in tp.items():
        mesh_tp, bare_tp = f"{t['mesh_gbps']:.1f} Gbit/s", f"hand-built {t['baseline_gbps']:.1f} Gbit/s"
        rows.append((f"4 throughput {kind}", mesh_tp, bare_tp, f"{t['ratio']:.2f}", "≥ 0.95"))
    title = f"# Benchmark report ({'quick' if args.quick else 'full'}, {n} connections, iperf3 {seconds} s)"
    lines = [title, "", "Every figure against a baseline measured in the same run on this machine.", "",
             "| target | mesh | baseline | ratio | goal |", "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {a} | {b} | {c_} | {d} | {e} |" for a, b, c_, d, e in rows]
    lines += ["", "![set-up latency](setup_latency.png)", "", "![throughput](throughput.png)", ""]
    (RESULTS / "report.md").write_text("\n".join(lines))
    (RESULTS / "report.json").write_text(json.dumps(data, indent=1))
    plots(data)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
