"""The README's first command: a live mesh on this machine, shown and removed.

One node (a network namespace running the registry and the agent), one endpoint
pod serving `demo-web`, two client pods. Each client asks for the service,
gets an interface, and pings the endpoint over it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from testbed.bed import Testbed, addresses, links, ping


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a one-node Network Service Mesh demo in namespaces")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--hold", type=float, default=0, help="seconds to keep the mesh up before removing it")
    args = parser.parse_args(argv)
    bed = Testbed()
    # SIGTERM (and Ctrl-C) still remove everything.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        say(f"creating namespaces with prefix {bed.prefix}")
        node = bed.netns("node1")
        ep_pod = bed.netns("web-0")
        clients = [bed.netns(f"client-{i}") for i in range(args.clients)]
        print(f"node: {node}  endpoint pod: {ep_pod}  client pods: {', '.join(clients)}")

        say("starting the registry and the node agent inside the node namespace")
        _, registry = bed.registry(node)
        _, agent = bed.agent(node, "node1", registry)
        print(f"registry {registry}, agent {agent}")

        say("starting endpoint web-0 for service demo-web (pool 10.60.0.0/24)")
        bed.endpoint(ep_pod, "web-0", "demo-web", "10.60.0.0/24", agent, extra=["--label", "app=web"])

        conns = []
        for i, pod in enumerate(clients):
            say(f"{pod}: nsmctl connect --service demo-web --ifname nsm-1")
            t0 = time.perf_counter()
            out = bed.nsmctl(
                "connect",
                "--agent",
                agent,
                "--netns",
                pod,
                "--service",
                "demo-web",
                "--ifname",
                "nsm-1",
                "--client-name",
                f"client-{i}",
                "-o",
                "json",
            )
            ms = (time.perf_counter() - t0) * 1000
            conn = json.loads(out.stdout)
            conns.append(conn)
            print(
                f"connected in {ms:.0f} ms (including nsmctl start-up): {conn['interface']} "
                f"{conn['client_ips'][0]} -> {conn['endpoint']} {conn['endpoint_ips'][0]}"
            )
            print(f"{pod} now has: {', '.join(links(pod))}; addresses {', '.join(addresses(pod))}")

        failed = 0
        for pod, conn in zip(clients, conns, strict=True):
            target = conn["endpoint_ips"][0].split("/")[0]
            ok = ping(pod, target, count=3)
            failed += not ok
            say(f"{pod} pings the endpoint at {target} over nsm-1: {'OK' if ok else 'FAILED'}")

        say("nsmctl get connections")
        print(bed.nsmctl("get", "connections", "--agent", agent).stdout)
        say("nsmctl get endpoints")
        print(bed.nsmctl("get", "endpoints", "--agent", agent).stdout)

        if args.hold:
            say(f"holding the mesh for {args.hold:.0f}s (namespaces {bed.prefix}-*)")
            time.sleep(args.hold)

        for conn in conns:
            bed.nsmctl("close", conn["id"], "--agent", agent)
        say("closed every connection; what is left in the pods:")
        for pod in [ep_pod, *clients]:
            print(f"{pod}: {', '.join(links(pod))}")
        leftovers = [pod for pod in [ep_pod, *clients] if links(pod) != ["lo"]]
        if failed or leftovers:
            say(f"demo FAILED: {failed} pings failed, leftovers in {leftovers}")
            return 1
        say("demo OK; removing everything")
        return 0
    finally:
        bed.cleanup()


if __name__ == "__main__":
    sys.exit(main())
