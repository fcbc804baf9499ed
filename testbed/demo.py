"""The README's first command: a live mesh on this machine, shown and removed.

Three nodes (network namespaces on one underlay bridge, each running its agent;
the registry sits on the underlay). Node 1 holds the client pods and a local
endpoint; node 2 an endpoint reached over VXLAN; node 3 one reached over
WireGuard. Each client asks for services by name, gets interfaces, and pings.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from testbed.bed import TRUST_DOMAIN, Testbed, links, ping
from testbed.cluster import Cluster


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a Network Service Mesh demo in namespaces")
    parser.add_argument("--hold", type=float, default=0, help="seconds to keep the mesh up before removing it")
    parser.add_argument("--ipv6", action="store_true", help="IPv6 underlay")
    parser.add_argument("--etcd", action="store_true", help="the registry stores in etcd (started on the underlay)")
    args = parser.parse_args(argv)
    bed = Testbed()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        say(f"building 3 nodes on an IPv{6 if args.ipv6 else 4} underlay (namespaces {bed.prefix}-*)")
        cluster = Cluster.build(bed, nodes=0, family=6 if args.ipv6 else 4, etcd=args.etcd)
        node1 = cluster.add_node(1, ["--remote-mechanisms", "WIREGUARD,VXLAN"])
        node2 = cluster.add_node(2, ["--remote-mechanisms", "VXLAN"])
        node3 = cluster.add_node(3, ["--remote-mechanisms", "WIREGUARD"])
        print(f"registry on the underlay at {cluster.registry_tcp}, store: {cluster.store}")
        print(f"mutual TLS on every TCP hop: CA {bed.dir / 'pki' / 'ca' / 'ca.crt'}, trust domain {TRUST_DOMAIN}, "
              f"agents spiffe://{TRUST_DOMAIN}/node/NAME, registry spiffe://{TRUST_DOMAIN}/registry")  # fmt: skip
        for node in cluster.nodes:
            print(f"{node.name}: tunnel address {node.tunnel_ip}, agent {node.agent}")

        say("endpoints: web-0 on node1, db-0 on node2 (VXLAN only), vpn-0 on node3 (WireGuard only)")
        endpoints = [
            (node1, "web-0", "demo-web", "10.60.0.0/24"),
            (node2, "db-0", "demo-db", "10.61.0.0/24"),
            (node3, "vpn-0", "demo-vpn", "10.62.0.0/24"),
        ]
        ep_pods = []
        for node, name, service, cidr in endpoints:
            pod = cluster.pod(node, name)
            ep_pods.append(pod)
            bed.endpoint(pod, name, service, cidr, node.agent, extra=["--label", "demo=yes"])
            print(f"{name} serves {service} from {node.name}, pool {cidr}")

        clients = [cluster.pod(node1, "client-0"), cluster.pod(node1, "client-1")]
        wanted = [
            (clients[0], "demo-web", "nsm-web"),
            (clients[1], "demo-web", "nsm-web"),
            (clients[0], "demo-db", "nsm-db"),
            (clients[0], "demo-vpn", "nsm-vpn"),
        ]
        conns = []
        failed = 0
        for pod, service, ifname in wanted:
            say(f"{pod}: nsmctl connect --service {service} --ifname {ifname}")
            t0 = time.perf_counter()
            out = bed.nsmctl("connect", "--agent", node1.agent, "--netns", pod, "--service", service,
                             "--ifname", ifname, "-o", "json")  # fmt: skip
            ms = (time.perf_counter() - t0) * 1000
            conn = json.loads(out.stdout)
            conns.append(conn)
            target = str(conn["endpoint_ips"][0]).split("/")[0]
            ok = ping(pod, target, count=3)
            failed += not ok
            print(f"{conn['interface']} {conn['client_ips'][0]} -> {conn['endpoint']} {target} "
                  f"over {conn['wire']}, MTU {conn['mtu'] or 1500}; {ms:.0f} ms with nsmctl start-up")  # fmt: skip
            print(f"ping {target} from {pod}: {'OK' if ok else 'FAILED'}")

        say("nsmctl get connections --agent (node1)")
        print(bed.nsmctl("get", "connections", "--agent", node1.agent).stdout)
        say("nsmctl get endpoints")
        print(bed.nsmctl("get", "endpoints", "--agent", node1.agent).stdout)

        if args.hold:
            say(f"holding the mesh for {args.hold:.0f}s")
            time.sleep(args.hold)

        for conn in conns:
            bed.nsmctl("close", str(conn["id"]), "--agent", node1.agent)
        say("closed every connection; what is left:")
        leftovers = []
        for pod in [*ep_pods, *clients]:
            print(f"{pod}: {', '.join(links(pod))}")
            if links(pod) != ["lo"]:
                leftovers.append(pod)
        for node in cluster.nodes:
            print(f"{node.netns}: {', '.join(links(node.netns))}")
            if sorted(links(node.netns)) != ["eth0", "lo"]:
                leftovers.append(node.netns)
        if failed or leftovers:
            say(f"demo FAILED: {failed} pings failed, leftovers in {leftovers}")
            return 1
        say("demo OK; removing everything")
        return 0
    finally:
        bed.cleanup()


if __name__ == "__main__":
    sys.exit(main())
