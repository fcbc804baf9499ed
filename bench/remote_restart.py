"""Target 6b: `kill -9` of the agent on the endpoint's node, started again 0.5 s later.

Two nodes; the endpoint on node 2 registered through node 2's agent; the client on
node 1 kept by `nsmctl connect --watch`, pinging its endpoint every 50 ms (120
pings). A second into the pings node 2's agent is killed and, 0.5 s later,
started again. The figure is how many pings went unanswered (the kernel carries
the traffic on both nodes all along: the goal is none), per tunnel kind.
"""

from __future__ import annotations

import os
import re
import signal
import time

from testbed.bed import Testbed
from testbed.cluster import Cluster
from testbed.keeper import keep, peer, wait_event

PINGS, EVERY = 120, 0.05


def pings_lost(bed: Testbed, mechanism: str, rounds: int) -> list[int]:
    cluster = Cluster.build(bed, nodes=2, agent_args=["--remote-mechanisms", mechanism])
    n1, n2 = cluster.nodes
    bed.endpoint(cluster.pod(n2, "ep"), f"ep-{mechanism.lower()}", "far", "10.171.0.0/24", n2.agent)
    client = cluster.pod(n1, "client")
    keeper = keep(bed, n1.agent, client, "far")
    address = peer(wait_event(keeper, "connected"))
    lost = []
    for r in range(rounds):
        pinger = bed.start(f"ping-{mechanism}-{r}", ["ping", "-i", str(EVERY), "-c", str(PINGS), "-W", "1", address],
                           netns=client)  # fmt: skip
        time.sleep(1)
        agent = [p for p in bed.procs if p.name == "agent-node2" and p.alive()][-1]
        os.kill(agent.popen.pid, signal.SIGKILL)
        agent.popen.wait(5)
        time.sleep(0.5)
        args = ["--listen", f"tcp://{n2.tunnel_ip}:5001", "--tunnel-ip", n2.tunnel_ip, "--remote-mechanisms", mechanism]
        new, _ = bed.agent(n2.netns, "node2", cluster.registry_tcp, extra=args)
        bed.wait_for(new, "carried on after restart", timeout=30)
        pinger.popen.wait(PINGS * EVERY + 15)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", pinger.output())
        if m is None:
            raise RuntimeError(pinger.output())
        lost.append(int(m.group(1)) - int(m.group(2)))
    keeper.stop()
    return lost
