"""The endpoint runtime and connection lifetimes over time."""

from __future__ import annotations

import time

from nsm_client.runtime import kernel_request
from testbed.bed import Testbed, links, ping
from tests.helpers.mesh import agent_client, make_mesh, only_lo


def test_registration_is_kept_alive_past_the_registry_maximum(bed: Testbed) -> None:
    node = bed.netns("node")
    _, registry = bed.registry(node, extra=["--max-expiration", "1.5"])
    _, agent = bed.agent(node, "node1", registry)
    bed.endpoint(bed.netns("ep"), "ep1", "web", "10.68.0.0/24", agent)
    time.sleep(4)  # well past 1.5 s: only renewals keep it
    assert "ep1" in bed.nsmctl("get", "endpoints", "--agent", agent).stdout
    pod = bed.netns("c1")
    conn = agent_client(agent).request(kernel_request(f"/var/run/netns/{pod}", "web", "nsm-1"))
    assert conn.network_service_endpoint_name == "ep1"


def test_restarted_endpoint_adopts_the_addresses_refreshes_bring_back(bed: Testbed) -> None:
    mesh = make_mesh(bed)
    ep_pod = bed.netns("ep")
    proc, _ = bed.endpoint(ep_pod, "ep1", "web", "10.69.0.0/24", mesh.agent)
    pod = bed.netns("c1")
    client = agent_client(mesh.agent)
    req = kernel_request(f"/var/run/netns/{pod}", "web", "nsm-1")
    first = client.request(req)
    proc.stop()  # the endpoint forgets its leases; the wire stays
    bed.endpoint(ep_pod, "ep1", "web", "10.69.0.0/24", mesh.agent)
    req.connection.CopyFrom(first)
    refreshed = client.request(req)
    assert refreshed.context.ip_context.src_ip_addrs == first.context.ip_context.src_ip_addrs
    assert refreshed.context.ip_context.dst_ip_addrs == first.context.ip_context.dst_ip_addrs
    other_pod = bed.netns("c2")
    other = client.request(kernel_request(f"/var/run/netns/{other_pod}", "web", "nsm-1"))
    taken = set(first.context.ip_context.src_ip_addrs) | set(first.context.ip_context.dst_ip_addrs)
    given = set(other.context.ip_context.src_ip_addrs) | set(other.context.ip_context.dst_ip_addrs)
    assert not taken & given, "an address was handed out twice"
    assert ping(pod, refreshed.context.ip_context.dst_ip_addrs[0].split("/")[0])
    assert ping(other_pod, other.context.ip_context.dst_ip_addrs[0].split("/")[0])


def test_connection_expires_when_its_client_stops_refreshing(bed: Testbed) -> None:
    mesh = make_mesh(bed, ["--max-lifetime", "2"])
    ep_pod = bed.netns("ep")
    bed.endpoint(ep_pod, "ep1", "web", "10.73.0.0/24", mesh.agent)
    pod = bed.netns("c1")
    client = agent_client(mesh.agent)
    client.request(kernel_request(f"/var/run/netns/{pod}", "web", "nsm-1"))
    assert "nsm-1" in links(pod)
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and not (only_lo(pod) and only_lo(ep_pod)):
        time.sleep(0.2)
    assert only_lo(pod) and only_lo(ep_pod)
    assert client.connections() == {}


def test_cli_names_namespaces_by_name_path_and_pid(bed: Testbed) -> None:
    mesh = make_mesh(bed)
    bed.endpoint(bed.netns("ep"), "ep1", "web", "10.74.0.0/24", mesh.agent)
    by_name, by_path, by_pid = bed.netns("n"), bed.netns("p"), bed.netns("i")
    holder = bed.start("holder", ["sleep", "600"], netns=by_pid)
    time.sleep(0.2)
    for pod, ref in ((by_name, by_name), (by_path, f"/var/run/netns/{by_path}"), (by_pid, str(holder.popen.pid))):
        out = bed.nsmctl("connect", "--agent", mesh.agent, "--netns", ref, "--service", "web", "--ifname", "nsm-1")
        assert "nsm-1" in out.stdout and "nsm-1" in links(pod)
