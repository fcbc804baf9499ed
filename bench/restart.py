"""Target 6: `kill -9` of the agent holding N connections, and its start again.

Twenty of the connections carry a ping every 10 ms from a second before the
kill until a second after the new agent has carried on every connection; the
figures are how many of those pings went unanswered, how long after the new
agent process was started a Request for a new connection was answered, when
it had carried on every connection (its survey: Monitor shows them, refresh and
Close work) and when every step held them again (the replays in the
background), against the time it took to request them anew in the first place.
"""

from __future__ import annotations

import os
import re
import signal
import time

from nsm_client.runtime import AgentClient, kernel_request
from nsm_common.urls import parse_address
from testbed.bed import Proc, Testbed, links
from testbed.mesh import one_node

SAMPLED = 20


def _ping(bed: Testbed, pod: str, address: str) -> Proc:
    """Pings every 10 ms until SIGINT (see `_answered`)."""
    return bed.start(f"ping-{pod}", ["ping", "-i", "0.01", "-W", "1", address], netns=pod)


def _answered(proc: Proc) -> tuple[int, int]:
    """Stop a ping and read its count of sent and answered (SIGINT makes it print them)."""
    os.kill(proc.popen.pid, signal.SIGINT)
    proc.popen.wait(10)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", proc.output())
    if m is None:
        raise RuntimeError(proc.output())
    return int(m.group(1)), int(m.group(2))


def _logged(proc: Proc, text: str, since: float, timeout: float = 120) -> float:
    """Seconds from `since` until `proc` logs `text` (polled every 5 ms)."""
    deadline = time.monotonic() + timeout
    while text not in proc.output():
        if time.monotonic() > deadline or not proc.alive():
            raise RuntimeError(f"{proc.name} did not log {text!r}:\n{proc.output()}")
        time.sleep(0.005)
    return time.monotonic() - since


def restart(bed: Testbed, n: int) -> dict[str, object]:
    mesh = one_node(bed)
    agent_proc, agent = mesh.agent_proc, mesh.agent
    bed.endpoint(bed.netns("ep"), "ep1", "rs", "10.160.0.0/16", agent)
    pods = [bed.netns(f"p{i}") for i in range(n)]
    client = AgentClient(parse_address(agent), timeout=60)
    t0 = time.monotonic()
    conns = [client.request(kernel_request(f"/var/run/netns/{pod}", "rs", "nsm-1")) for pod in pods]
    requested_s = time.monotonic() - t0
    client.close_channel()
    step = max(1, n // SAMPLED)
    sampled = range(0, n, step)[:SAMPLED]
    pings = [_ping(bed, pods[i], conns[i].context.ip_context.dst_ip_addrs[0].split("/")[0]) for i in sampled]
    time.sleep(1)
    os.kill(agent_proc.popen.pid, signal.SIGKILL)
    agent_proc.popen.wait(10)
    newcomer = bed.netns("new")
    started = time.monotonic()
    new_proc, _ = bed.agent(mesh.node, "node1", mesh.registry, wait=False)
    client = AgentClient(parse_address(agent), timeout=2)
    while True:
        try:
            fresh = client.request(kernel_request(f"/var/run/netns/{newcomer}", "rs", "nsm-1"))
            break
        except Exception:  # not listening yet
            if time.monotonic() - started > 60:
                raise
            time.sleep(0.01)
    serving_after = time.monotonic() - started
    restored_after = _logged(new_proc, "carried on after restart", started)
    settled_after = _logged(new_proc, "every step holds its connections again", started)
    survey = re.search(r"carried on after restart.*?seconds=([0-9.]+)", new_proc.output())
    time.sleep(1)  # pings go on past the end of the restore
    sent = received = 0
    for proc in pings:
        s, r = _answered(proc)
        sent, received = sent + s, received + r
    client = AgentClient(parse_address(agent), timeout=60)
    for conn in [*conns, fresh]:
        client.close(conn)
    client.close_channel()
    leftovers = [pod for pod in [*pods, newcomer] if links(pod) != ["lo"]]
    return {
        "connections": n,
        "pings_sent": sent,
        "pings_lost": sent - received,
        "serving_after_s": serving_after,
        "restored_after_s": restored_after,
        "survey_s": float(survey.group(1)) if survey else -1.0,
        "settled_after_s": settled_after,
        "requested_anew_s": requested_s,
        "leftovers": leftovers,
    }
