"""Every kind of bad input gets a clear error and leaves nothing behind."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import grpc
import pytest

from nsm_api.connection_pb2 import Mechanism
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_api.registry_pb2 import NetworkService
from nsm_client.runtime import kernel_request
from testbed.bed import Testbed, links, run
from testbed.mesh import Mesh
from tests.helpers.mesh import agent_client, make_mesh, only_lo, raw_endpoint


def refused(mesh: Mesh, request: NetworkServiceRequest, timeout: float = 15) -> grpc.RpcError:
    client = agent_client(mesh.agent, timeout=timeout)
    try:
        with pytest.raises(grpc.RpcError) as info:
            client.request(request)
        assert client.connections() == {}, "a refused Request left a connection behind"
        return info.value
    finally:
        client.close_channel()


@pytest.fixture
def served(mesh: Mesh) -> tuple[Mesh, str, str]:
    """A mesh with endpoint ep1 of service `web` and a client pod."""
    ep_pod = mesh.bed.netns("ep")
    mesh.bed.endpoint(ep_pod, "ep1", "web", "10.66.0.0/24", mesh.agent)
    return mesh, ep_pod, mesh.bed.netns("c1")


def with_param(req: NetworkServiceRequest, **params: str) -> NetworkServiceRequest:
    for k, v in params.items():
        req.mechanism_preferences[0].parameters[k] = v
    return req


def test_empty_and_unknown_service(served: tuple[Mesh, str, str]) -> None:
    mesh, ep_pod, pod = served
    err = refused(mesh, kernel_request(f"/var/run/netns/{pod}", ""))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "names no network service" in str(err.details())
    err = refused(mesh, kernel_request(f"/var/run/netns/{pod}", "no-such-svc"))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "'no-such-svc'" in str(err.details())
    assert only_lo(pod) and only_lo(ep_pod)


def test_service_without_endpoints(served: tuple[Mesh, str, str]) -> None:
    mesh, _, pod = served
    client = agent_client(mesh.agent)
    from nsm_api import registry_pb2_grpc

    registry_pb2_grpc.NetworkServiceRegistryStub(client.channel).Register(NetworkService(name="lonely"), timeout=5)
    err = refused(mesh, kernel_request(f"/var/run/netns/{pod}", "lonely"))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "'lonely' has no endpoints" in str(err.details())
    assert only_lo(pod)


@pytest.mark.parametrize(
    ("ifname", "words"),
    [("a" * 16, "at most 15"), ("a/b", "'/'"), ("a b", "whitespace"), ("x..y", "'..'")],
)
def test_bad_interface_names(served: tuple[Mesh, str, str], ifname: str, words: str) -> None:
    mesh, ep_pod, pod = served
    err = refused(mesh, kernel_request(f"/var/run/netns/{pod}", "web", ifname))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and words in str(err.details())
    assert only_lo(pod) and only_lo(ep_pod)


def test_interface_name_already_used(served: tuple[Mesh, str, str]) -> None:
    mesh, ep_pod, pod = served
    run("ip", "-n", pod, "link", "add", "taken0", "type", "bridge")
    err = refused(mesh, kernel_request(f"/var/run/netns/{pod}", "web", "taken0"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "'taken0' is already used" in str(err.details())
    assert sorted(links(pod)) == ["lo", "taken0"]  # the pod's own interface is untouched
    assert only_lo(ep_pod)


def test_namespace_that_does_not_exist_is_not_created(served: tuple[Mesh, str, str]) -> None:
    mesh, _, _ = served
    ghost = f"{mesh.bed.prefix}-ghost"
    req = kernel_request("/proc/self/ns/net", "web", "nsm-1")
    req.mechanism_preferences[0].parameters["inodeURL"] = f"file:///var/run/netns/{ghost}"
    del req.mechanism_preferences[0].parameters["netnsInode"]
    err = refused(mesh, req)
    assert err.code() == grpc.StatusCode.NOT_FOUND and ghost in str(err.details())
    assert not os.path.exists(f"/var/run/netns/{ghost}")
    req.mechanism_preferences[0].parameters["inodeURL"] = "inode://4/999999999"
    err = refused(mesh, req)
    assert err.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("which", ["proc-self", "agent-own", "host"])
def test_forbidden_namespaces(served: tuple[Mesh, str, str], which: str) -> None:
    mesh, _, _ = served
    url = {
        "proc-self": "file:///proc/self/ns/net",
        "agent-own": f"file:///var/run/netns/{mesh.node}",
        # The test runs in the host's namespace; PID 1's may be hidden here.
        "host": f"file:///proc/{os.getpid()}/ns/net",
    }[which]
    req = kernel_request("/proc/self/ns/net", "web", "nsm-1")
    req.mechanism_preferences[0].parameters["inodeURL"] = url
    del req.mechanism_preferences[0].parameters["netnsInode"]
    before_node = links(mesh.node)
    err = refused(mesh, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any(w in str(err.details()) for w in ("/proc/self", "own network namespace", "host's network namespace"))
    assert links(mesh.node) == before_node


def test_unknown_mechanism_type(served: tuple[Mesh, str, str]) -> None:
    mesh, _, pod = served
    req = kernel_request(f"/var/run/netns/{pod}", "web", "nsm-1")
    req.mechanism_preferences[0].type = "MEMIF"
    err = refused(mesh, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "'MEMIF' is not supported" in str(err.details())
    del req.mechanism_preferences[:]
    err = refused(mesh, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "no mechanism_preferences" in str(err.details())
    req.mechanism_preferences.append(Mechanism(cls="REMOTE", type="KERNEL"))
    err = refused(mesh, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def _rogue_case(
    bed: Testbed, mode: str, agent_args: list[str] | None = None
) -> tuple[Mesh, str, str, Callable[[], str]]:
    mesh = make_mesh(bed, agent_args)
    ep_pod = bed.netns("rogue")
    _, journal = raw_endpoint(bed, ep_pod, "rogue", "web", mesh.agent, mode=mode)
    return mesh, ep_pod, bed.netns("c1"), journal.read_text


def test_malformed_address_in_endpoint_reply_is_named_and_undone(bed: Testbed) -> None:
    mesh, ep_pod, pod, journal = _rogue_case(bed, "bad-cidr")
    err = refused(mesh, kernel_request(f"/var/run/netns/{pod}", "web", "nsm-1"))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "bad context" in str(err.details()) and "300/32" in str(err.details()) and "rogue" in str(err.details())
    assert only_lo(pod) and only_lo(ep_pod)
    lines = journal().splitlines()
    assert lines[0].startswith("request ") and lines[-1].startswith("close ")  # the endpoint's lease was given back


def test_endpoint_that_does_not_answer(bed: Testbed) -> None:
    mesh, ep_pod, pod, _ = _rogue_case(bed, "hang", ["--request-timeout", "1"])
    start = time.monotonic()
    err = refused(mesh, kernel_request(f"/var/run/netns/{pod}", "web", "nsm-1"))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "rogue" in str(err.details())
    assert time.monotonic() - start < 10
    assert only_lo(pod) and only_lo(ep_pod)


def test_endpoint_that_crashes_mid_request(bed: Testbed) -> None:
    mesh, ep_pod, pod, journal = _rogue_case(bed, "crash")
    err = refused(mesh, kernel_request(f"/var/run/netns/{pod}", "web", "nsm-1"))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "rogue" in str(err.details())
    assert "request " in journal()
    assert only_lo(pod) and only_lo(ep_pod)


def test_a_failing_endpoint_is_skipped_for_a_working_one(bed: Testbed) -> None:
    mesh, _, pod, _ = _rogue_case(bed, "crash")
    good_pod = bed.netns("good")
    bed.endpoint(good_pod, "good", "web", "10.67.0.0/24", mesh.agent)
    client = agent_client(mesh.agent)
    # Round robin starts with either; whichever comes first, the good one serves.
    for i in range(2):
        target = bed.netns(f"x{i}")
        conn = client.request(kernel_request(f"/var/run/netns/{target}", "web", "nsm-1"))
        assert conn.network_service_endpoint_name == "good"
        client.close(conn)
        assert only_lo(target)
    assert only_lo(pod)
    client.close_channel()


def test_registry_down_is_unavailable(bed: Testbed) -> None:
    node = bed.netns("node")
    proc, agent = bed.agent(node, "node1", f"unix://{bed.dir}/nobody-listens.sock")
    pod = bed.netns("c1")
    mesh = Mesh(bed, node, "", agent, proc)
    start = time.monotonic()
    err = refused(mesh, kernel_request(f"/var/run/netns/{pod}", "web", "nsm-1"))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "registry" in str(err.details()) and "attempts" in str(err.details())
    assert time.monotonic() - start < 15
    assert only_lo(pod)


def test_cli_names_the_bad_flag(bed: Testbed) -> None:
    pod = bed.netns("c1")
    cases = [
        (["connect", "--netns", pod, "--service", "web", "--ifname", "x" * 20], "--ifname"),
        (["connect", "--netns", f"{bed.prefix}-nope", "--service", "web"], "--netns"),
        (["connect", "--netns", pod, "--service", "web", "--label", "novalue"], "--label"),
        (["connect", "--netns", pod, "--service", "web", "--agent", "http://x"], "--agent"),
        (["endpoint", "--netns", pod, "--name", "e", "--service", "web", "--cidr", "10.0.0.0/33"], "--cidr"),
    ]
    for args, flag in cases:
        res = bed.nsmctl(*args, check=False)
        assert res.returncode == 2, res
        assert res.stderr.startswith(f"nsmctl: {flag}"), res.stderr
    assert not os.path.exists(f"/var/run/netns/{bed.prefix}-nope")
