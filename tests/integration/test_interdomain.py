"""Clusters behind routers on a shared internet (testbed/clusters.py), every one on the same
private range 10.0.0.0/24: a pod of cluster1 reaches `svc@cluster2` agent to agent over
WireGuard between the nodes' public addresses (the routers' 1:1 NAT), with IP and ETHERNET
payloads; `svc@floating` through the floating registry; and what is refused."""

from __future__ import annotations

import ipaddress
import os
import signal
import sys

import grpc
import pytest

from nsm_api import networkservice_pb2_grpc
from nsm_client.runtime import kernel_request
from testbed.bed import Testbed, links, patience, ping, ping_df, run
from testbed.clusters import Federation, public_ip
from testbed.keeper import events, peer, wait_event
from tests.helpers.across import keep_across
from tests.helpers.mesh import agent_client
from tests.helpers.upstream import upstream_request

POOL = "10.90.0.0/24"  # the endpoint's: connections carry their own addresses


@pytest.fixture
def fed(bed: Testbed) -> Federation:
    return Federation.build(bed, clusters=3, nodes=1, agent_args=["--remote-mechanisms", "WIREGUARD"])


def wireguard_endpoints(netns: str) -> str:
    return run("ip", "netns", "exec", netns, "wg", "show", "all", "endpoints").stdout


@pytest.mark.parametrize("payload", ["IP", "ETHERNET"])
def test_a_pod_reaches_a_service_of_another_cluster(fed: Federation, payload: str) -> None:
    bed = fed.bed
    here, there = fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes[0]
    assert here.private_ip == there.private_ip  # the same private range on both sides
    bed.endpoint(fed.pod(there, "ep"), "ep1", "svc", POOL, there.agent, extra=["--payload", payload])
    pod = fed.pod(here, "c1")
    conn = agent_client(here.agent).request(kernel_request(f"/var/run/netns/{pod}", "svc@cluster2", "nsm-1"))
    assert conn.payload == payload
    assert conn.network_service == "svc@cluster2" and conn.network_service_endpoint_name == "ep1@cluster2"
    assert [s.name for s in conn.path.path_segments] == ["nsmctl", here.name, there.name, "ep1"]
    assert conn.path.path_segments[1].metrics["tunnel"] == "WIREGUARD"
    peer = conn.context.ip_context.dst_ip_addrs[0].split("/")[0]
    assert ping(pod, peer, count=3)
    # Node to node over the public addresses, no gateway in the data path.
    assert f"{there.public_ip}:51820" in wireguard_endpoints(here.netns)
    assert f"{here.public_ip}:51820" in wireguard_endpoints(there.netns)
    agent_client(here.agent).close(conn)
    assert not ping(pod, peer, count=1, timeout=1)


def test_a_service_of_the_floating_registry(fed: Federation) -> None:
    bed = fed.bed
    here, there = fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes[0]
    bed.endpoint(fed.pod(there, "ep"), "fep@floating", "fsvc@floating", POOL, there.agent)
    floating = next(p for p in bed.procs if p.name == "registry-floating")
    # The floating registry holds plain names, with the node's public URL.
    assert f"url=tcp://{there.public_ip}:5001" in floating.output() and "name=fep" in floating.output()
    pod = fed.pod(here, "c1")
    conn = agent_client(here.agent).request(kernel_request(f"/var/run/netns/{pod}", "fsvc@floating", "nsm-1"))
    assert conn.network_service_endpoint_name == "fep@floating"
    assert [s.name for s in conn.path.path_segments] == ["nsmctl", here.name, there.name, "fep@floating"]
    assert ping(pod, conn.context.ip_context.dst_ip_addrs[0].split("/")[0], count=3)


def test_only_wireguard_crosses_between_domains(bed: Testbed) -> None:
    fed = Federation.build(bed, clusters=2, nodes=1, agent_args=["--remote-mechanisms", "VXLAN"])
    here, there = fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes[0]
    bed.endpoint(fed.pod(there, "ep"), "ep1", "svc", POOL, there.agent)
    pod = fed.pod(here, "c1")
    with pytest.raises(grpc.RpcError) as info:
        agent_client(here.agent).request(kernel_request(f"/var/run/netns/{pod}", "svc@cluster2", "nsm-1"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "a connection to another domain needs WIREGUARD" in str(info.value.details())
    assert links(pod) == ["lo"]  # nothing left behind


def test_an_upstream_built_client_asks_its_agent_for_a_service_of_another_cluster(fed: Federation) -> None:
    """Only the wire stubs, plaintext on the agent's own unix socket, as an upstream pod asks."""
    bed = fed.bed
    here, there = fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes[0]
    bed.endpoint(fed.pod(there, "ep"), "ep1", "svc", POOL, there.agent)
    pod = fed.pod(here, "c1")
    holder = bed.start("holder", ["sleep", "600"], netns=pod)
    channel = grpc.insecure_channel(here.agent)
    stub = networkservice_pb2_grpc.NetworkServiceStub(channel)
    request = upstream_request("svc@cluster2", "nsm-1", {"inodeURL": f"file:///proc/{holder.popen.pid}/ns/net"})
    conn = stub.Request(request, timeout=patience(15))
    assert [s.name for s in conn.path.path_segments] == ["upstream-client", here.name, there.name, "ep1"]
    assert ping(pod, conn.context.ip_context.dst_ip_addrs[0].split("/")[0], count=2)
    stub.Close(conn, timeout=patience(15))
    channel.close()


def test_inside_a_domain_agents_reach_each_other_at_their_public_urls(bed: Testbed) -> None:
    """Endpoints are registered at the agent's --public-url; its own cluster's agents dial it
    there (the router's NAT answers from inside), and the tunnel stays on the private range."""
    fed = Federation.build(bed, clusters=2, nodes=2, agent_args=["--remote-mechanisms", "VXLAN"])
    n1, n2 = fed.domain("cluster1").nodes
    bed.endpoint(fed.pod(n1, "ep"), "ep1", "svc", POOL, n1.agent)
    pod = fed.pod(n2, "c1")
    conn = agent_client(n2.agent).request(kernel_request(f"/var/run/netns/{pod}", "svc", "nsm-1"))
    assert [s.name for s in conn.path.path_segments] == ["nsmctl", n2.name, n1.name, "ep1"]
    hop = conn.path.path_segments[1].metrics
    assert hop["tunnel"] == "VXLAN" and hop["remote"] == n1.private_ip
    assert ping(pod, conn.context.ip_context.dst_ip_addrs[0].split("/")[0], count=2)


def test_the_path_mtu_across_the_internet_is_probed(bed: Testbed) -> None:
    """The routers' internet links carry 1400 bytes, the clusters' own 1500: sized from the
    underlay, the tunnel would lose every full packet. The endpoint's agent probes (DF) and
    both pods get the MTU the path carries: 1400 - 60 (WireGuard) - 70 (the inner VXLAN)."""
    fed = Federation.build(bed, clusters=2, nodes=1, agent_args=["--remote-mechanisms", "WIREGUARD"], internet_mtu=1400)
    here, there = fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes[0]
    ep = fed.pod(there, "ep")
    bed.endpoint(ep, "ep1", "svc", POOL, there.agent)
    pod = fed.pod(here, "c1")
    conn = agent_client(here.agent).request(kernel_request(f"/var/run/netns/{pod}", "svc@cluster2", "nsm-1"))
    shown = run("ip", "-n", pod, "link", "show", "nsm-1").stdout
    mtu = int(shown.split(" mtu ")[1].split()[0])
    far_log = next(p for p in bed.procs if p.name == f"agent-{there.name}").output()
    assert 1400 - 8 - 130 <= mtu <= 1400 - 130, far_log  # the search stops within 8 bytes
    peer = conn.context.ip_context.dst_ip_addrs[0].split("/")[0]
    answered, out = ping_df(pod, peer, mtu - 28)  # a full packet, Don't Fragment
    assert answered, out
    assert "path MTU probed" in next(p for p in bed.procs if p.name == f"agent-{there.name}").output()


TRUST = {"cluster1": "cluster1.test", "cluster2": "cluster2.test", "floating": "floating.test"}


def test_each_domain_its_own_trust_domain_federated_by_bundles(bed: Testbed) -> None:
    """Every cluster its own CA; each trusts the others' by --trust-bundle: registries call
    across, agents Request across, path tokens verify across."""
    fed = Federation.build(
        bed, clusters=3, nodes=1, agent_args=["--remote-mechanisms", "WIREGUARD"], trust_domains=TRUST
    )
    here, there = fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes[0]
    bed.endpoint(fed.pod(there, "ep"), "ep1", "svc", POOL, there.agent)
    bed.endpoint(fed.pod(there, "fep"), "fep@floating", "fsvc@floating", "10.91.0.0/24", there.agent)
    pod = fed.pod(here, "c1")
    for service in ("svc@cluster2", "fsvc@floating"):
        conn = agent_client(here.agent).request(kernel_request(f"/var/run/netns/{pod}", service, f"nsm-{service[0]}"))
        assert ping(pod, conn.context.ip_context.dst_ip_addrs[0].split("/")[0], count=2), service
    # Three CAs: each cluster's components hold certificates of their own trust domain only.
    cas = {(bed.ca(td) / "ca.crt").read_bytes() for td in TRUST.values()}
    assert len(cas) == 3
    assert (bed.identity(f"spiffe://cluster2.test/node/{there.name}") / "ca.crt").read_bytes() != (
        bed.identity(f"spiffe://cluster1.test/node/{here.name}") / "ca.crt"
    ).read_bytes()


def test_a_peer_of_a_trust_domain_without_a_bundle_is_refused(bed: Testbed) -> None:
    fed = Federation.build(bed, clusters=2, nodes=1, agent_args=["--remote-mechanisms", "WIREGUARD"],
                           trust_domains=TRUST, bundles=False)  # fmt: skip
    here, there = fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes[0]
    bed.endpoint(fed.pod(there, "ep"), "ep1", "svc", POOL, there.agent)
    pod = fed.pod(here, "c1")
    with pytest.raises(grpc.RpcError) as info:
        agent_client(here.agent).request(kernel_request(f"/var/run/netns/{pod}", "svc@cluster2", "nsm-1"))
    assert "registry of domain cluster2" in str(info.value.details()), info.value.details()
    assert links(pod) == ["lo"]


def test_a_domain_s_registry_found_by_dns(bed: Testbed) -> None:
    """Cluster1's registry has no map: it asks the DNS server on the internet for the SRV and
    A records of registry.nsm-system.cluster2, as upstream's registries do."""
    nameserver = "203.0.113.53"
    fed = Federation.build(bed, clusters=2, nodes=1, agent_args=["--remote-mechanisms", "WIREGUARD"],
                           registry_args={"cluster1": []}, nameserver=nameserver)  # fmt: skip
    name = "registry.nsm-system.cluster2"
    serve = ["--listen", nameserver, "--srv", f"{name}=5002", "--a", f"{name}={public_ip(2, 0)}"]
    dns = bed.start("dns", [sys.executable, "-m", "tests.helpers.dns_zone", *serve], netns=fed.internet_ns)
    bed.wait_for(dns, "dns serving")
    here, there = fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes[0]
    bed.endpoint(fed.pod(there, "ep"), "ep1", "svc", POOL, there.agent)
    pod = fed.pod(here, "c1")
    conn = agent_client(here.agent).request(kernel_request(f"/var/run/netns/{pod}", "svc@cluster2", "nsm-1"))
    assert ping(pod, conn.context.ip_context.dst_ip_addrs[0].split("/")[0], count=2)
    registry = next(p for p in bed.procs if p.name == "registry-cluster1").output()
    assert "domain registry found" in registry and f"url=tcp://{public_ip(2, 0)}:5002" in registry


def test_over_an_ipv6_internet(bed: Testbed) -> None:
    """IPv6 underlays in both clusters (the same fd00:10::/64), NAT66 one to one, the
    internet 2001:db8:113::/64 carrying 1400 bytes: WireGuard between the public addresses,
    the path MTU probed with ICMPv6."""
    fed = Federation.build(bed, clusters=2, nodes=1, agent_args=["--remote-mechanisms", "WIREGUARD"], family=6,
                           internet_mtu=1400)  # fmt: skip
    here, there = fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes[0]
    assert here.private_ip == there.private_ip == "fd00:10::1"
    bed.endpoint(fed.pod(there, "ep"), "ep1", "svc", POOL, there.agent)
    pod = fed.pod(here, "c1")
    conn = agent_client(here.agent).request(kernel_request(f"/var/run/netns/{pod}", "svc@cluster2", "nsm-1"))
    assert conn.path.path_segments[1].metrics["tunnel"] == "WIREGUARD"
    assert ping(pod, conn.context.ip_context.dst_ip_addrs[0].split("/")[0], count=3)
    assert f"[{there.public_ip}]:51820" in wireguard_endpoints(here.netns)
    shown = run("ip", "-n", pod, "link", "show", "nsm-1").stdout
    assert 1400 - 8 - 150 <= int(shown.split(" mtu ")[1].split()[0]) <= 1400 - 150  # WireGuard over IPv6: 80 + 70


def test_the_client_cluster_s_own_ranges_stay_out_of_the_far_endpoint_s_addresses(bed: Testbed) -> None:
    """Cluster1 excludes 10.90.0.0/25 (its own ranges, say): the endpoint in cluster2, whose
    pool is 10.90.0.0/24, hands this connection addresses from the other half."""
    excluded = bed.dir / "excluded.yaml"
    excluded.write_text("prefixes:\n- 10.90.0.0/25\n")
    fed = Federation.build(bed, clusters=2, nodes=1, agent_args=["--remote-mechanisms", "WIREGUARD"],
                           domain_agent_args={"cluster1": ["--excluded-prefixes", str(excluded)]})  # fmt: skip
    here, there = fed.domain("cluster1").nodes[0], fed.domain("cluster2").nodes[0]
    bed.endpoint(fed.pod(there, "ep"), "ep1", "svc", POOL, there.agent)
    pod = fed.pod(here, "c1")
    conn = agent_client(here.agent).request(kernel_request(f"/var/run/netns/{pod}", "svc@cluster2", "nsm-1"))
    ips = [*conn.context.ip_context.src_ip_addrs, *conn.context.ip_context.dst_ip_addrs]
    assert ips and all(ipaddress.ip_interface(a).ip in ipaddress.ip_network("10.90.0.128/25") for a in ips), ips
    assert ping(pod, conn.context.ip_context.dst_ip_addrs[0].split("/")[0], count=2)


@pytest.mark.parametrize("fault", ["endpoint-killed", "node-cut-off"])
def test_heal_across_domains_to_the_other_endpoint(bed: Testbed, fault: str) -> None:
    """Two endpoints of svc in cluster2, on two nodes; the client in cluster1 keeps its
    connection (`nsmctl connect --watch`). The serving endpoint's process is killed (its
    pod still answers pings: its agent reports it DOWN, and the client's agent, following
    that agent's Monitor, passes it on), or its node drops off its cluster's underlay (the
    client's probe finds the far end silent): either way the client is healed onto the
    other endpoint, across the boundary."""
    fed = Federation.build(bed, clusters=2, nodes=2, agent_args=["--remote-mechanisms", "WIREGUARD"])
    kept = keep_across(bed, fed)
    keeper, pod, serving = kept.keeper, kept.pod, kept.serving
    n = len(events(keeper))
    if fault == "endpoint-killed":
        os.kill(kept.endpoints[serving].popen.pid, signal.SIGKILL)
    else:
        run("ip", "-n", kept.serving_node.netns, "link", "set", "eth0", "down")
    healed = wait_event(keeper, "healed", n, timeout=30)
    assert healed["endpoint"] != serving
    if fault == "endpoint-killed":
        assert "the agent reports the endpoint down" in str(healed["event"])
    assert ping(pod, peer(healed), count=2, timeout=2)
    keeper.stop()
    assert links(pod) == ["lo"]
