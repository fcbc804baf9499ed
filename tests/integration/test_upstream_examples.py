"""Upstream NSM's feature examples (deployments-k8s `examples/features/...`), in their shape,
with our agent, endpoint and client runtimes in real namespaces: the same services, ranges,
annotations and checks. The pods are namespaces; the Kubernetes objects (Pods, ConfigMaps)
are not there: the annotation goes to `nsmctl pod` as the webhook would pass it, and the
ConfigMap is a folder laid out as the kubelet projects one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from nsm_client.runtime import kernel_request
from testbed.bed import BIN, Testbed, links, ping, run
from testbed.keeper import events, keep, wait_event
from tests.helpers.mesh import HERE, agent_client, make_mesh, only_lo


def pod_client(bed: Testbed, agent: str, pod: str, services: str, groups: str = "") -> list[str]:
    """`nsmctl pod --once` inside POD, as the webhook's init container runs it."""
    env = {**os.environ, "NSM_POD_NAME": pod, "NSM_POD_NAMESPACE": "apps", "NODE_NAME": "node1",
           "POD_NAME": pod, **({"NSM_AWARENESS_GROUPS": groups} if groups else {})}  # fmt: skip
    done = subprocess.run(
        ["ip", "netns", "exec", pod, str(BIN / "nsmctl"), "pod", "--once", "--agent", agent, "--services", services],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def routes(pod: str, dev: str) -> list[str]:
    return [" ".join(line.split()) for line in run("ip", "-n", pod, "route", "show", "dev", dev).stdout.splitlines()]


def test_multiple_services(bed: Testbed) -> None:
    """features/multiple-services: one pod, two services, nsm-1 and nsm-2."""
    mesh = make_mesh(bed)
    nse1, nse2, alpine = bed.netns("nse1"), bed.netns("nse2"), bed.netns("alpine")
    bed.endpoint(nse1, "nse-kernel-1", "multiple-services-1", "172.16.1.100/31", mesh.agent)
    bed.endpoint(nse2, "nse-kernel-2", "multiple-services-2", "172.16.2.100/31", mesh.agent)
    pod_client(bed, mesh.agent, alpine, "kernel://multiple-services-1/nsm-1,kernel://multiple-services-2/nsm-2")
    assert {"nsm-1", "nsm-2"} <= set(links(alpine))
    assert ping(alpine, "172.16.1.100") and ping(nse1, "172.16.1.101")
    assert ping(alpine, "172.16.2.100") and ping(nse2, "172.16.2.101")
    # The location labels reached the agent with the Requests.
    conns = agent_client(mesh.agent).connections()
    assert {c.labels["podName"] for c in conns.values()} == {alpine}
    assert {c.labels["nodeName"] for c in conns.values()} == {"node1"}


def test_exclude_prefixes_client(bed: Testbed) -> None:
    """features/exclude-prefixes-client: two endpoints on the same 172.16.1.96/29; the second
    Request excludes the first connection's pair."""
    mesh = make_mesh(bed)
    nse1, nse2, alpine = bed.netns("nse1"), bed.netns("nse2"), bed.netns("alpine")
    bed.endpoint(nse1, "nse-kernel-1", "nsm-service-1", "172.16.1.96/29", mesh.agent)
    bed.endpoint(nse2, "nse-kernel-2", "nsm-service-2", "172.16.1.96/29", mesh.agent)
    pod_client(bed, mesh.agent, alpine, "kernel://nsm-service-1/nsm-1,kernel://nsm-service-2/nsm-2")
    assert ping(alpine, "172.16.1.96") and ping(alpine, "172.16.1.98")
    assert ping(nse1, "172.16.1.97") and ping(nse2, "172.16.1.99")
    # Two `nsmctl connect` in another pod: interfaces nsm-1 and nsm-2, addresses apart.
    other = bed.netns("other")
    for service in ("nsm-service-1", "nsm-service-2"):
        bed.nsmctl("connect", "--agent", mesh.agent, "--netns", other, "--service", service)
    assert {"nsm-1", "nsm-2"} <= set(links(other))
    mine = [c for c in agent_client(mesh.agent).connections().values() if c.mechanism.parameters["name"] and
            c.mechanism.parameters.get("netnsInode") == str(os.stat(f"/var/run/netns/{other}").st_ino)]  # fmt: skip
    addresses = [a for c in mine for a in [*c.context.ip_context.src_ip_addrs, *c.context.ip_context.dst_ip_addrs]]
    assert len(mine) == 2 and len(set(addresses)) == 4


def test_mutually_aware_nses(bed: Testbed) -> None:
    """features/mutually-aware-nses: two endpoints with the same 172.16.1.100/31, one awareness
    group, kept apart by the endpoints' policy routes."""
    mesh = make_mesh(bed)
    configs = {}
    for n, (proto, port) in enumerate(((6, 6666), (17, 5555)), 1):
        path = bed.dir / f"policies-config-file-{n}.yaml"
        path.write_text(f"- from: 172.16.1.101/32\n  proto: {proto}\n  dstport: {port}\n"
                        "  routes:\n    - prefix: 172.16.1.100/32\n")  # fmt: skip
        configs[n] = path
        pod = bed.netns(f"nse{n}")
        bed.endpoint(pod, f"nse-kernel-{n}", f"mutually-aware-nses-{n}", "172.16.1.100/31", mesh.agent,
                     extra=["--pbr-config", str(path)])  # fmt: skip
    services = "kernel://mutually-aware-nses-1/nsm-1?color=red,kernel://mutually-aware-nses-2/nsm-2?color=red"
    nsc = bed.netns("nsc")
    pod_client(bed, mesh.agent, nsc, services, groups=f"[{services}]")
    tcp = run("ip", "-n", nsc, "route", "get", "172.16.1.100", "from", "172.16.1.101", "ipproto", "tcp",
              "dport", "6666").stdout  # fmt: skip
    udp = run("ip", "-n", nsc, "route", "get", "172.16.1.100", "from", "172.16.1.101", "ipproto", "udp",
              "dport", "5555").stdout  # fmt: skip
    assert "172.16.1.100 from 172.16.1.101 dev nsm-1" in tcp, tcp
    assert "172.16.1.100 from 172.16.1.101 dev nsm-2" in udp, udp
    rules = run("ip", "-n", nsc, "rule", "show").stdout
    assert rules.count("from 172.16.1.101 ipproto tcp dport 6666 lookup") == 1, rules
    # Closing the connections takes their rules (which outlive links) and tables along.
    client = agent_client(mesh.agent)
    for conn in list(client.connections().values()):
        client.close(conn)
    assert "172.16.1.101" not in run("ip", "-n", nsc, "rule", "show").stdout
    assert only_lo(nsc)
    # Without the group the second Request excludes the only pair of its /31, and nothing is built.
    lone = bed.netns("lone")
    done = subprocess.run(
        ["ip", "netns", "exec", lone, str(BIN / "nsmctl"), "pod", "--once", "--agent", mesh.agent,
         "--services", services], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode != 0 and "RESOURCE_EXHAUSTED" in done.stderr and "172.16.1.100/31" in done.stderr
    assert "nsm-2" not in links(lone)


def configmap_folder(folder: Path, text: str, version: int) -> None:
    """Lay the file out as the kubelet projects a ConfigMap: `..data` swapped to a new folder."""
    folder.mkdir(exist_ok=True)
    data = folder / f"..v{version}"
    data.mkdir()
    (data / "excluded_prefixes_input.yaml").write_text(text)
    os.symlink(data.name, folder / "..tmp")
    os.replace(folder / "..tmp", folder / "..data")
    link = folder / "excluded_prefixes_input.yaml"
    if not link.is_symlink():
        os.symlink("..data/excluded_prefixes_input.yaml", link)


EXCLUDED = "prefixes:\n- 172.16.1.201/32\n- 172.16.1.202/32\n"


def test_exclude_prefixes(bed: Testbed) -> None:
    """features/exclude-prefixes: the ConfigMap excludes .201 and .202; the endpoint on
    172.16.1.200/30 gives the pair .200/.203. A change moves a live connection; a bad line is
    named and the last good list stays."""
    folder = bed.dir / "excluded-prefixes-config"
    configmap_folder(folder, EXCLUDED, 1)
    mesh = make_mesh(bed, ["--excluded-prefixes", str(folder / "excluded_prefixes_input.yaml")])
    nse, alpine = bed.netns("nse"), bed.netns("alpine")
    bed.endpoint(nse, "nse-kernel", "exclude-prefixes", "172.16.1.200/30", mesh.agent)
    bed.endpoint(bed.netns("nse-wide"), "nse-wide", "wide", "172.16.3.0/29", mesh.agent)
    pod_client(bed, mesh.agent, alpine, "kernel://exclude-prefixes/nsm-1")
    assert ping(alpine, "172.16.1.200") and ping(nse, "172.16.1.203")
    # A live connection whose address becomes excluded is moved, in place.
    keeper = keep(bed, mesh.agent, bed.netns("mover"), "wide")
    first = wait_event(keeper, "connected")
    assert first["client_ips"] == ["172.16.3.1/32"]
    configmap_folder(folder, EXCLUDED + "- 172.16.3.0/31\n", 2)
    deadline = time.monotonic() + 10
    while "172.16.3.3/32" not in run("ip", "-n", keeper_pod(keeper), "addr").stdout:
        assert time.monotonic() < deadline, mesh.agent_proc.output()[-3000:]
        time.sleep(0.1)
    assert ping(keeper_pod(keeper), "172.16.3.2")
    assert "172.16.3.1/32" not in run("ip", "-n", keeper_pod(keeper), "addr").stdout
    # A bad line: named in the log, the last good list stays (.0/31 still avoided).
    configmap_folder(folder, "prefixes:\n- 172.16.3.0/31\n- 172.16.3.300/32\n", 3)
    bed.wait_for(mesh.agent_proc, "line 3: '172.16.3.300/32' is not a CIDR")
    conn = agent_client(mesh.agent).request(kernel_request(f"/var/run/netns/{bed.netns('late')}", "wide", "nsm-1"))
    assert "172.16.1.201/32" in conn.context.ip_context.excluded_prefixes
    assert not any(a.startswith(("172.16.3.0/", "172.16.3.1/")) for a in conn.context.ip_context.src_ip_addrs)
    keeper.stop()


def keeper_pod(proc) -> str:  # type: ignore[no-untyped-def]
    return str(proc.popen.args[proc.popen.args.index("--netns") + 1])


def test_exclude_prefixes_reach_an_endpoint_built_from_upstreams_definitions(bed: Testbed) -> None:
    folder = bed.dir / "excluded-prefixes-config"
    configmap_folder(folder, EXCLUDED, 1)
    mesh = make_mesh(bed, ["--excluded-prefixes", str(folder / "excluded_prefixes_input.yaml")])
    nse, alpine = bed.netns("nse"), bed.netns("alpine")
    journal = raw_p2p(bed, mesh.agent, nse, "raw-nse", "exclude-prefixes", "172.16.1.200/30")
    pod_client(bed, mesh.agent, alpine, "kernel://exclude-prefixes/nsm-1")
    assert "172.16.1.201/32,172.16.1.202/32" in journal.read_text()
    assert ping(alpine, "172.16.1.200") and ping(nse, "172.16.1.203")


def raw_p2p(bed: Testbed, agent: str, pod: str, name: str, service: str, cidr: str) -> Path:
    journal = bed.dir / f"{name}.journal"
    journal.touch()
    proc = bed.start(name, [sys.executable, str(HERE / "raw_endpoint.py"), "--mode", "p2p", "--name", name,
                            "--service", service, "--netns", f"/var/run/netns/{pod}", "--listen",
                            f"unix://{bed.dir}/{name}.sock", "--registry", agent, "--journal", str(journal),
                            "--cidr", cidr, "--renew"])  # fmt: skip
    bed.wait_for(proc, "raw endpoint registered")
    return journal


def test_ipam_policies(bed: Testbed) -> None:
    """features/ipam-policies: two clients on the first endpoint (172.16.1.0/29, polite); it goes;
    the second (172.16.2.0/29, strict) takes them, and only its routes remain."""
    mesh = make_mesh(bed)
    first_pod = bed.netns("first-nse")
    first, _ = bed.endpoint(first_pod, "first-nse", "ipam-policies", "172.16.1.0/29", mesh.agent)
    clients = {bed.netns("alpine-1"): "nsm-1", bed.netns("alpine-2"): "nsm-2"}
    keepers = {pod: keep(bed, mesh.agent, pod, "ipam-policies", ifname) for pod, ifname in clients.items()}
    for proc in keepers.values():
        wait_event(proc, "connected")
    peers = sorted(str(events(p)[0]["endpoint_ips"][0]).split("/")[0] for p in keepers.values())  # type: ignore[index]
    assert peers == ["172.16.1.0", "172.16.1.2"]
    assert ping(first_pod, "172.16.1.1") and ping(first_pod, "172.16.1.3")
    counts = {pod: len(events(p)) for pod, p in keepers.items()}
    os.kill(first.popen.pid, signal.SIGKILL)  # `kubectl delete pod`: the pod and its side go
    run("ip", "netns", "del", first_pod)
    bed.namespaces.remove(first_pod)
    second_pod = bed.netns("second-nse")
    bed.endpoint(second_pod, "second-nse", "ipam-policies", "172.16.2.0/29", mesh.agent,
                 extra=["--ipam-policy", "strict"])  # fmt: skip
    for pod, proc in keepers.items():
        healed = wait_event(proc, "healed", counts[pod], timeout=30)
        assert healed["endpoint"] == "second-nse"
        # Only the routes from 172.16.2.0/29 remain on the client.
        assert routes(pod, clients[pod]) in (["172.16.2.0 scope link"], ["172.16.2.2 scope link"])
        assert "172.16.1." not in run("ip", "-n", pod, "addr", "show", clients[pod]).stdout
    assert ping(second_pod, "172.16.2.1") and ping(second_pod, "172.16.2.3")
    for proc in keepers.values():
        proc.stop()


@pytest.mark.parametrize("second", ["ours", "upstream-built"])
def test_polite_keeps_the_clients_address_across_a_heal(bed: Testbed, second: str) -> None:
    """A heal to another endpoint of the same range keeps the client's address (polite); an
    endpoint built from upstream's definitions sees the address in the Request and keeps it too."""
    mesh = make_mesh(bed)
    a_pod = bed.netns("nse-a")
    a, _ = bed.endpoint(a_pod, "nse-a", "svc", "172.16.5.0/29", mesh.agent)
    client = bed.netns("alpine")
    # Take .0/.1 on a first so that the kept connection holds .2/.3, not what any fresh pool gives.
    agent_client(mesh.agent).request(kernel_request(f"/var/run/netns/{bed.netns('filler')}", "svc", "nsm-1"))
    keeper = keep(bed, mesh.agent, client, "svc")
    held = wait_event(keeper, "connected")
    assert held["client_ips"] == ["172.16.5.3/32"]
    n = len(events(keeper))
    os.kill(a.popen.pid, signal.SIGKILL)
    run("ip", "netns", "del", a_pod)
    bed.namespaces.remove(a_pod)
    b_pod = bed.netns("nse-b")
    journal = None
    if second == "ours":
        bed.endpoint(b_pod, "nse-b", "svc", "172.16.5.0/29", mesh.agent)
    else:
        journal = raw_p2p(bed, mesh.agent, b_pod, "nse-b", "svc", "172.16.5.0/29")
    healed = wait_event(keeper, "healed", n, timeout=30)
    assert healed["endpoint"] == "nse-b" and "172.16.5.3/32" in str(healed["client_ips"])
    assert ping(client, str(healed["endpoint_ips"][0]).split("/")[0])  # type: ignore[index]
    if journal is not None:
        assert "brought" in journal.read_text() and "172.16.5.3/32" in journal.read_text()
    keeper.stop()


def test_bad_ipam_input_is_refused_and_leaves_nothing(bed: Testbed) -> None:
    mesh = make_mesh(bed)
    pod = bed.netns("nse")
    for extra, message in [
        (["--cidr", "172.16.1.0/29,172.16.300.0/29"], "--cidr: '172.16.300.0/29' is not a CIDR"),
        (["--cidr", "172.16.1.0/29", "--ipam-policy", "lenient"], "--ipam-policy: 'lenient' is not an IPAM policy"),
    ]:
        done = bed.nsmctl("endpoint", "--agent", mesh.agent, "--netns", pod, "--name", "e", "--service", "s",
                          *extra, check=False)  # fmt: skip
        assert done.returncode == 2 and message in done.stderr, done.stderr
    assert only_lo(pod) and agent_client(mesh.agent).connections() == {}
    # A malformed excluded prefix in a Request: INVALID_ARGUMENT, nothing built.
    bed.endpoint(pod, "e", "s", "172.16.1.0/29", mesh.agent)
    client_pod = bed.netns("c")
    req = kernel_request(f"/var/run/netns/{client_pod}", "s", "nsm-1")
    req.connection.context.ip_context.excluded_prefixes.append("172.16.1.0/33")
    with pytest.raises(grpc.RpcError) as caught:
        agent_client(mesh.agent).request(req)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "excluded_prefixes: '172.16.1.0/33' is not a valid CIDR" in str(caught.value.details())
    assert only_lo(client_pod) and agent_client(mesh.agent).connections() == {}


def test_a_bad_excluded_prefixes_file_stops_the_agent_naming_the_line(bed: Testbed) -> None:
    bad = bed.dir / "excluded.yaml"
    bad.write_text("prefixes:\n- 10.96.0.0/12\n- 10.96.0.0/40\n")
    node = bed.netns("node")
    proc, sock = bed.agent(node, "node1", "unix:///nonexistent.sock", ["--excluded-prefixes", str(bad)], wait=False)
    proc.popen.wait(timeout=20)
    assert proc.popen.returncode != 0
    assert f"--excluded-prefixes: {bad} line 3: '10.96.0.0/40' is not a CIDR" in proc.output()
    assert not Path(sock.removeprefix("unix://")).exists()


def test_location_labels_select_the_endpoint_on_the_clients_node(bed: Testbed) -> None:
    """Upstream's local-endpoint match: `nodeName: "{{.nodeName}}"` picks the endpoint that
    registered the client's node name (the location labels come from NODE_NAME)."""
    from nsm_api import registry_pb2_grpc
    from nsm_api.registry_pb2 import Destination, Match, NetworkService
    from nsm_common.identity.transport import LOCAL_ONLY
    from nsm_common.urls import parse_address

    mesh = make_mesh(bed)
    channel = LOCAL_ONLY.sync_channel(parse_address(mesh.agent))
    local = Match(routes=[Destination(destination_selector={"nodeName": "{{.nodeName}}"})])
    registry_pb2_grpc.NetworkServiceRegistryStub(channel).Register(
        NetworkService(name="local-svc", payload="IP", matches=[local]), timeout=5
    )
    channel.close()
    for node in ("node-a", "node-b"):
        bed.endpoint(bed.netns(f"nse-{node}"), f"nse-{node}", "local-svc", "172.16.7.0/28" if node == "node-a"
                     else "172.16.8.0/28", mesh.agent, env={"NODE_NAME": node})  # fmt: skip
    for node in ("node-b", "node-b", "node-a", "node-a"):  # round robin alone would alternate
        pod = bed.netns(f"on-{node}-{time.monotonic_ns() % 10_000}")
        env = {**os.environ, "NODE_NAME": node, "NSM_IDENTITY_DIR": str(bed.identity("spiffe://nsm.test/ns/t/sa/t"))}
        done = subprocess.run(
            [str(BIN / "nsmctl"), "connect", "--agent", mesh.agent, "--netns", pod, "--service", "local-svc",
             "-o", "json"], capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f'"endpoint": "nse-{node}"' in done.stdout
