"""A registry restart (memory store): connections keep working and refreshing,
and endpoints fill the new registry again within one refresh period."""

from __future__ import annotations

import os
import signal
import time

import grpc

from nsm_api import registry_pb2_grpc
from nsm_api.registry_pb2 import NetworkService, NetworkServiceQuery
from nsm_client.runtime import kernel_request
from nsm_common.identity.transport import LOCAL_ONLY
from nsm_common.urls import parse_address
from testbed.bed import Proc, Testbed, ping
from tests.helpers.mesh import agent_client, ifindex, raw_endpoint
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


def service_or_none(agent: str, name: str) -> NetworkService | None:
    """The service, or None while it is not back, including while the agent's channel to the
    restarted registry is still reconnecting (UNAVAILABLE)."""
    try:
        return registered_service(agent, name)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
            raise
        return None


def registered_service(agent: str, name: str) -> NetworkService | None:
    channel = LOCAL_ONLY.sync_channel(parse_address(agent))
    try:
        query = NetworkServiceQuery(network_service=NetworkService(name=name))
        found = [
            r.network_service for r in registry_pb2_grpc.NetworkServiceRegistryStub(channel).Find(query, timeout=5)
        ]
    finally:
        channel.close()
    return found[0] if found else None


def test_a_service_registered_once_comes_back_as_it_was_after_registry_restarts(bed: Testbed) -> None:
    """An upstream-style endpoint registers its service once (ETHERNET, with a match) and then
    renews only its endpoint record; the memory-store registry restarts, alone and then with
    the agent: the service comes back exactly as registered, within one renewal period."""
    node = bed.netns("node")
    registry_proc, registry = bed.registry(node, extra=["--max-expiration", str(MAX)])
    agent_proc, agent = bed.agent(node, "node1", registry)
    extra = ["--payload", "ETHERNET", "--match", "app=web", "--renew"]
    raw_endpoint(bed, bed.netns("ep"), "ep1", "eth-svc", agent, prefix="10.97.0", extra=extra)
    original = registered_service(agent, "eth-svc")
    assert original is not None and original.payload == "ETHERNET" and len(original.matches) == 1

    def restart(*procs: Proc) -> None:
        for proc in procs:
            os.kill(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(5)

    for round_ in ("registry alone", "registry and agent"):
        restart(registry_proc, *([agent_proc] if round_ == "registry and agent" else []))
        registry_proc, _ = bed.registry(node, extra=["--max-expiration", str(MAX)])
        if round_ == "registry and agent":
            agent_proc, _ = bed.agent(node, "node1", registry)
        restarted = time.monotonic()
        while (again := service_or_none(agent, "eth-svc")) is None:
            assert time.monotonic() - restarted < 2 * MAX, f"{round_}: the service did not come back"
            time.sleep(0.1)
        assert again == original, round_  # payload and matches as registered, not rebuilt
        pod = bed.netns(f"c-{round_.split()[-1]}")
        req = kernel_request(f"/var/run/netns/{pod}", "eth-svc", "nsm-1", labels={"app": "web"})
        conn = agent_client(agent).request(req)
        assert conn.payload == "ETHERNET" and conn.network_service_endpoint_name == "ep1"
