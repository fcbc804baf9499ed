"""A registry restart (memory store): connections keep working and refreshing,
and endpoints fill the new registry again within one refresh period."""

from __future__ import annotations

import os
import signal
import time

from nsm_client.runtime import kernel_request
from testbed.bed import Testbed, ping
from tests.helpers.mesh import agent_client, ifindex
from tests.helpers.ping import lost, start_ping

MAX = 3.0  # registry maximum: endpoints renew every MAX/3 seconds


def test_registry_restart(bed: Testbed) -> None:
    node = bed.netns("node")
    registry_proc, registry = bed.registry(node, extra=["--max-expiration", str(MAX)])
    _, agent = bed.agent(node, "node1", registry)
    bed.endpoint(bed.netns("ep"), "ep1", "svc", "10.96.0.0/24", agent)
    pod = bed.netns("c1")
    client = agent_client(agent)
    req = kernel_request(f"/var/run/netns/{pod}", "svc", "nsm-1")
    conn = client.request(req)
    index = ifindex(pod, "nsm-1")
    pinger = start_ping(bed, pod, conn.context.ip_context.dst_ip_addrs[0].split("/")[0], 5)

    os.kill(registry_proc.popen.pid, signal.SIGKILL)
    registry_proc.popen.wait(5)
    req.connection.CopyFrom(conn)
    refreshed = client.request(req)  # no registry: the refresh still goes through
    assert ifindex(pod, "nsm-1") == index
    assert refreshed.context.ip_context.src_ip_addrs == conn.context.ip_context.src_ip_addrs

    restarted = time.monotonic()
    bed.registry(node, extra=["--max-expiration", str(MAX)])
    while "ep1" not in bed.nsmctl("get", "endpoints", "--agent", agent, check=False).stdout:
        assert time.monotonic() - restarted < MAX, "the endpoint did not register again within one refresh period"
        time.sleep(0.1)
    refill = time.monotonic() - restarted
    other = bed.netns("c2")
    fresh = client.request(kernel_request(f"/var/run/netns/{other}", "svc", "nsm-1"))
    assert ping(other, fresh.context.ip_context.dst_ip_addrs[0].split("/")[0])
    req.connection.CopyFrom(refreshed)
    assert client.request(req).context.ip_context.src_ip_addrs == conn.context.ip_context.src_ip_addrs
    assert ifindex(pod, "nsm-1") == index
    sent, got = lost(pinger)
    assert sent == got, f"lost {sent - got} of {sent} pings"
    print(f"registry refilled {refill * 1000:.0f} ms after its restart")
