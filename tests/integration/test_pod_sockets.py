"""Sockets that know their pod: the node's socket is root's (0600); a pod's own socket lets
its caller name only that pod's namespace and see, refresh or close only its connections
(PERMISSION_DENIED otherwise); the sockets come back after the agent restarts and go with
their pod. The clients are plaintext, built from upstream's definitions, as upstream's are."""

from __future__ import annotations

import os
import signal
import stat
import time

import grpc
import pytest

from nsm_api import networkservice_pb2_grpc
from nsm_client.runtime import AgentClient, kernel_request
from nsm_common.chain.path_tokens import OutgoingTokens
from nsm_common.identity.spiffe_id import SpiffeId
from nsm_common.identity.tls import channel_credentials, channel_options
from nsm_common.urls import parse_address
from testbed.bed import TRUST_DOMAIN, Testbed, links, ping, run
from testbed.mesh import one_node


def denied(fn: object) -> str:
    with pytest.raises(grpc.RpcError) as info:
        fn()  # type: ignore[operator]
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value
    return str(info.value.details())  # type: ignore[attr-defined]


def test_a_pods_socket_is_confined_to_its_pod(bed: Testbed) -> None:
    mesh = one_node(bed)
    node_socket = parse_address(mesh.agent).path
    assert stat.S_IMODE(os.stat(node_socket).st_mode) == 0o600
    bed.endpoint(bed.netns("ep"), "ep1", "web", "10.70.0.0/24", mesh.agent)
    a, b = bed.netns("a"), bed.netns("b")
    sock_a = bed.nsmctl("pod-socket", "--agent", mesh.agent, "--netns", a).stdout.strip()
    sock_b = bed.nsmctl("pod-socket", "--agent", mesh.agent, "--netns", b, "--name", "pod-b").stdout.strip()
    assert sock_b.endswith("/pod-b.sock") and stat.S_IMODE(os.stat(parse_address(sock_a).path).st_mode) == 0o666
    again = bed.nsmctl("pod-socket", "--agent", mesh.agent, "--netns", a).stdout.strip()
    assert again == sock_a  # one socket per pod
    pod_a, pod_b = AgentClient(parse_address(sock_a)), AgentClient(parse_address(sock_b))
    try:
        conn_a = pod_a.request(kernel_request(f"/var/run/netns/{a}", "web", "nsm-1"))
        conn_b = pod_b.request(kernel_request(f"/var/run/netns/{b}", "web", "nsm-1"))
        peer_b = conn_b.context.ip_context.dst_ip_addrs[0].split("/")[0]
        assert ping(a, conn_a.context.ip_context.dst_ip_addrs[0].split("/")[0]) and ping(b, peer_b)

        why = denied(lambda: pod_a.request(kernel_request(f"/var/run/netns/{b}", "web", "nsm-2")))
        assert "serves network namespace inode" in why and links(b) == ["lo", "nsm-1"]
        assert f"is not {os.path.basename(sock_a).removesuffix('.sock')}'s" in denied(lambda: pod_a.close(conn_b))
        # Its own namespace with another pod's connection id: would move that connection.
        steal = kernel_request(f"/var/run/netns/{a}", "web", "nsm-9", conn_id=conn_b.path.path_segments[0].id)
        denied(lambda: pod_a.request(steal))
        assert ping(b, peer_b) and links(a) == ["lo", "nsm-1"]
        seen = pod_a.connections()
        assert [c.path.path_segments[0].id for c in seen.values()] == [conn_a.path.path_segments[0].id]

        # A restarted agent opens the pods' sockets again; a pod that goes takes its socket.
        os.kill(mesh.agent_proc.popen.pid, signal.SIGKILL)
        mesh.agent_proc.popen.wait(5)
        proc, _ = bed.agent(mesh.node, "node1", mesh.registry)
        bed.wait_for(proc, "pod sockets serving")  # after the survey, a moment after "agent serving"
        pod_a.close_channel()
        pod_a = AgentClient(parse_address(sock_a))
        assert [c.path.path_segments[0].id for c in pod_a.connections().values()] == [conn_a.path.path_segments[0].id]
        pod_b.close(conn_b)
        pod_b.close_channel()
        bed.namespaces.remove(b)
        run("ip", "netns", "del", b)
        deadline = time.monotonic() + 10
        while os.path.exists(parse_address(sock_b).path) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not os.path.exists(parse_address(sock_b).path)
        pod_a.close(conn_a)
    finally:
        pod_a.close_channel()
        pod_b.close_channel()


def test_pod_sockets_are_opened_on_the_nodes_socket_only(bed: Testbed) -> None:
    mesh = one_node(bed)
    a = bed.netns("a")
    sock_a = bed.nsmctl("pod-socket", "--agent", mesh.agent, "--netns", a).stdout.strip()
    # A pod's own socket has no such call; a bad name is refused naming it.
    res = bed.nsmctl("pod-socket", "--agent", sock_a, "--netns", a, check=False)
    assert res.returncode == 1 and "UNIMPLEMENTED" in res.stderr, res
    res = bed.nsmctl("pod-socket", "--agent", mesh.agent, "--netns", bed.netns("c"), "--name", "../x", check=False)
    assert res.returncode == 1 and "socket name '../x'" in res.stderr, res
    res = bed.nsmctl("pod-socket", "--agent", mesh.agent, "--netns", f"{bed.prefix}-nope", check=False)
    assert res.returncode == 2 and res.stderr.startswith("nsmctl: --netns"), res


def test_a_tls_socket_serves_local_clients_with_an_svid(bed: Testbed) -> None:
    """Upstream's own clients dial the node's socket with mutual TLS: `--tls-socket` serves them
    (workloads and agents), never plaintext, and opens no pod sockets."""
    tls = f"{bed.dir}/tls/nsm.io.sock"
    mesh = one_node(bed, agent_args=["--tls-socket", tls])
    assert stat.S_IMODE(os.stat(tls).st_mode) == 0o666
    bed.endpoint(bed.netns("ep"), "ep1", "web", "10.71.0.0/24", mesh.agent)
    pod = bed.netns("a")
    server = SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/node/node1")

    def channel(who: str) -> grpc.Channel:
        svid = bed.transport(who).identity
        assert svid is not None
        return grpc.secure_channel(f"unix:{tls}", channel_credentials(svid.current()), options=channel_options(server))

    workload = channel(f"spiffe://{TRUST_DOMAIN}/ns/default/sa/web")
    stub = networkservice_pb2_grpc.NetworkServiceStub(workload)
    tokens = OutgoingTokens(bed.transport(f"spiffe://{TRUST_DOMAIN}/ns/default/sa/web").identity)
    request = kernel_request(f"/var/run/netns/{pod}", "web", "nsm-1")
    conn = stub.Request(request, timeout=15, metadata=tokens.sign_for(request.connection, str(server)))
    assert ping(pod, conn.context.ip_context.dst_ip_addrs[0].split("/")[0])
    opener = workload.unary_unary("/nsmpy.PodSockets/Open", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        opener(b'{"netns": "/var/run/netns/%s"}' % pod.encode(), timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    stub.Close(conn, timeout=15, metadata=tokens.sign_for(conn, str(server)))
    workload.close()
    nobody = networkservice_pb2_grpc.NetworkServiceStub(channel(f"spiffe://{TRUST_DOMAIN}/tools/scan"))
    assert "is of no role" in denied(lambda: nobody.Request(kernel_request(f"/var/run/netns/{pod}", "web", "nsm-1")))
    plain = grpc.insecure_channel(f"unix:{tls}")
    with pytest.raises(grpc.RpcError) as info:
        networkservice_pb2_grpc.NetworkServiceStub(plain).Request(
            kernel_request(f"/var/run/netns/{pod}", "web", "nsm-1"), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    plain.close()
    assert links(pod) == ["lo"]
