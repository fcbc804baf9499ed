"""Target 5: an endpoint's pod is removed; how long until the client's ping is answered again.

The client is kept by `nsmctl connect --watch` (default probe interval 200 ms).
Each round removes the pod of whichever endpoint serves it (process killed,
namespace deleted) and times fault → first answered ping to the endpoint it
healed to; a fresh endpoint is started so that every round has a spare.
"""

from __future__ import annotations

import os
import signal
import time

from testbed.bed import Proc, Testbed, ping, run
from testbed.keeper import events, keep, peer, wait_event
from testbed.mesh import one_node


def heal_times(bed: Testbed, rounds: int) -> list[float]:
    agent = one_node(bed).agent
    endpoints: dict[str, tuple[str, Proc]] = {}

    def spare(i: int) -> None:
        pod = bed.netns(f"ep{i}")
        proc, _ = bed.endpoint(pod, f"ep{i}", "heal", f"10.150.{i}.0/24", agent)
        endpoints[f"ep{i}"] = (pod, proc)

    spare(0)
    spare(1)
    client = bed.netns("client")
    keeper = keep(bed, agent, client, "heal")
    serving = str(wait_event(keeper, "connected")["endpoint"])
    took = []
    for r in range(rounds):
        seen = len(events(keeper))
        pod, proc = endpoints.pop(serving)
        fault_at = time.monotonic()
        os.kill(proc.popen.pid, signal.SIGKILL)
        run("ip", "netns", "del", pod)
        bed.namespaces.remove(pod)
        healed = wait_event(keeper, "healed", seen)
        while not ping(client, peer(healed), count=1, timeout=1):
            if time.monotonic() - fault_at > 30:
                raise RuntimeError("no ping after healing")
        took.append(time.monotonic() - fault_at)
        serving = str(healed["endpoint"])
        spare(r + 2)
    return took
