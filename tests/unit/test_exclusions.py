"""What a pod's Request excludes (the pod's other connections, awareness groups), the
awareness-group syntax, and the location labels. Pure; no agent."""

from __future__ import annotations

import pytest

from nsm_api.connection_pb2 import Connection
from nsm_api.connectioncontext_pb2 import Route
from nsm_client.exclusions import Asked, excluded_for, next_ifname, overlap, pod_connections
from nsm_client.runtime import PodScope, kernel_request
from nsm_common.location import with_location
from nsm_k8s import AnnotationError, parse_awareness_groups


def connection(cid: str, service: str, ifname: str, src: str, dst: str, ino: str = "77") -> Connection:
    conn = Connection(id=cid, network_service=service)
    conn.path.path_segments.add(id=cid)
    conn.mechanism.parameters.update(name=ifname, netnsInode=ino)
    ip = conn.context.ip_context
    ip.src_ip_addrs.append(src)
    ip.dst_ip_addrs.append(dst)
    ip.src_routes.extend([Route(prefix=dst), Route(prefix="10.0.0.0/8")])
    ip.dst_routes.append(Route(prefix=src))
    return conn


def test_the_second_service_excludes_the_first_ones_addresses_and_host_routes() -> None:
    # deployments-k8s features/exclude-prefixes-client: both endpoints on 172.16.1.96/29.
    first = connection("a", "nsm-service-1", "nsm-1", "172.16.1.97/32", "172.16.1.96/32")
    excluded = excluded_for(Asked("nsm-service-2", "nsm-2", {}), [first], [])
    assert excluded == ["172.16.1.97/32", "172.16.1.96/32"]  # not the shared 10.0.0.0/8


def test_services_of_one_awareness_group_exclude_nothing_of_each_other() -> None:
    groups = parse_awareness_groups(
        "[kernel://mutually-aware-nses-1/nsm-1?color=red,kernel://mutually-aware-nses-2/nsm-2?color=red]"
    )
    first = connection("a", "mutually-aware-nses-1", "nsm-1", "172.16.1.101/32", "172.16.1.100/32")
    first.labels.update(color="red", nodeName="node1")  # the location labels do not get in the way
    assert excluded_for(Asked("mutually-aware-nses-2", "nsm-2", {"color": "red"}), [first], groups) == []
    # Not a member (another label): excluded as usual.
    assert excluded_for(Asked("mutually-aware-nses-2", "nsm-2", {"color": "blue"}), [first], groups)


def test_only_the_pods_other_connections_count() -> None:
    mine = connection("a", "s", "nsm-1", "10.1.0.1/32", "10.1.0.0/32")
    other_pod = connection("b", "s", "nsm-1", "10.2.0.1/32", "10.2.0.0/32", ino="88")
    itself = connection("c", "s", "nsm-2", "10.3.0.1/32", "10.3.0.0/32")
    assert pod_connections([mine, other_pod, itself], "77", "c") == [mine]
    assert next_ifname([mine]) == "nsm-2" and next_ifname([]) == "nsm-1"


def test_a_reply_inside_the_exclusions_is_named() -> None:
    reply = connection("c", "s", "nsm-2", "172.16.1.97/32", "172.16.1.96/32")
    reply.network_service_endpoint_name = "nse-2"
    assert overlap(reply, ["172.16.1.96/32"]) == (
        "endpoint nse-2 handed out 172.16.1.96/32, inside the excluded prefix 172.16.1.96/32 "
        "(another connection of this pod uses it)"
    )
    assert overlap(reply, ["172.16.2.0/24"]) is None


def test_the_scope_sets_the_requests_exclusions_afresh(tmp_path) -> None:  # type: ignore[no-untyped-def]
    req = kernel_request("/proc/self/ns/net", "nsm-service-2")
    req.connection.context.ip_context.excluded_prefixes.append("192.0.2.0/24")  # what an old reply carried
    scope = PodScope(77)
    first = connection("a", "nsm-service-1", "nsm-1", "172.16.1.97/32", "172.16.1.96/32")
    assert scope.name_interface(req, [first]) == "nsm-2"
    scope.prepare(req, [first])
    assert list(req.connection.context.ip_context.excluded_prefixes) == ["172.16.1.97/32", "172.16.1.96/32"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("kernel://a/nsm-1", "expected [URL,...]"),
        ("[kernel://a/nsm-1],[", "expected [URL"),
        ("[kernel://a/nsm-1]],[kernel://b]", "unbalanced"),
        ("[kernel://a/nsm-1,]", "group 1 has an empty entry"),
        ("[kernel://a/nsm-1],[vfio://b]", "mechanism 'vfio' is not supported"),
    ],
)
def test_bad_awareness_groups_are_named(value: str, message: str) -> None:
    with pytest.raises(AnnotationError) as caught:
        parse_awareness_groups(value)
    assert message in str(caught.value)


def test_location_labels_come_from_the_environment_and_never_override() -> None:
    env = {"NODE_NAME": "node1", "POD_NAME": "alpine", "CLUSTER_NAME": ""}
    assert with_location({"app": "x"}, env) == {"app": "x", "nodeName": "node1", "podName": "alpine"}
    assert with_location({"nodeName": "mine"}, env)["nodeName"] == "mine"
