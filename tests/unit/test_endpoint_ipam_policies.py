"""The endpoint's IPAM step under its policies, and its policy routes (in process)."""

from __future__ import annotations

import grpc
import pytest

from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Chain
from nsm_common.errors import NsmError
from nsm_endpoint.ipam import IpamPolicy, PointToPointPool
from nsm_endpoint.policy_routes import PolicyRoutesError, parse_policy_routes
from nsm_endpoint.steps import PointToPointIpam, PolicyRoutes
from tests.helpers.steps import Recorder


def request(conn_id: str, src: list[str] = [], dst: list[str] = [], excluded: list[str] = []) -> NetworkServiceRequest:  # noqa: B006
    req = NetworkServiceRequest(connection=Connection(id=conn_id, network_service="svc"))
    ip = req.connection.context.ip_context
    ip.src_ip_addrs.extend(src)
    ip.dst_ip_addrs.extend(dst)
    ip.excluded_prefixes.extend(excluded)
    return req


def ipam(policy: IpamPolicy, *cidrs: str) -> Chain:
    return Chain([PointToPointIpam([PointToPointPool(c) for c in cidrs], policy), Recorder()])


def addrs(conn: Connection) -> tuple[list[str], list[str], list[str]]:
    ip = conn.context.ip_context
    return list(ip.src_ip_addrs), list(ip.dst_ip_addrs), [r.prefix for r in ip.src_routes]


async def test_polite_keeps_a_free_address_of_its_pool_and_drops_the_rest() -> None:
    chain = ipam(IpamPolicy.POLITE, "172.16.1.0/29")
    # Healed here from another endpoint of the same range: the client keeps .5, gets .4's peer.
    reply = await chain.request(request("c", src=["172.16.1.5/32", "10.9.9.9/32"], dst=["172.16.2.0/32"]))
    assert addrs(reply) == (["172.16.1.5/32"], ["172.16.1.0/32"], ["172.16.1.0/32"])


async def test_strict_replaces_what_the_client_brings() -> None:
    chain = ipam(IpamPolicy.STRICT, "172.16.1.0/29")
    reply = await chain.request(request("c", src=["172.16.1.5/32"], dst=["172.16.1.4/32"]))
    assert addrs(reply) == (["172.16.1.1/32"], ["172.16.1.0/32"], ["172.16.1.0/32"])


async def test_a_lease_that_becomes_excluded_is_moved_on_the_next_request() -> None:
    chain = ipam(IpamPolicy.POLITE, "172.16.1.200/30")
    first = await chain.request(request("c"))
    assert addrs(first)[0] == ["172.16.1.201/32"]
    again = await chain.request(request("c", src=addrs(first)[0], dst=addrs(first)[1], excluded=["172.16.1.201/32"]))
    assert addrs(again) == (["172.16.1.202/32"], ["172.16.1.200/32"], ["172.16.1.200/32"])


async def test_several_pools_give_a_pair_each() -> None:
    reply = await ipam(IpamPolicy.POLITE, "172.16.1.0/31", "fd00:16::/120").request(request("c"))
    assert addrs(reply)[0] == ["172.16.1.1/32", "fd00:16::2/128"]


async def test_a_malformed_excluded_prefix_is_refused_and_nothing_is_leased() -> None:
    pool = PointToPointPool("172.16.1.0/29")
    chain = Chain([PointToPointIpam([pool]), Recorder()])
    with pytest.raises(NsmError) as caught:
        await chain.request(request("c", excluded=["172.16.1.0/33"]))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "'172.16.1.0/33'" in caught.value.message
    assert pool.leases == {}


UPSTREAM_PBR = """
- from: 172.16.1.101/32
  proto: 6
  dstport: 6666
  routes:
    - prefix: 172.16.1.100/32
"""


async def test_policy_routes_from_upstreams_file_reach_the_reply() -> None:
    policies = parse_policy_routes(UPSTREAM_PBR, "config.yaml")
    reply = await Chain([PolicyRoutes(policies), Recorder()]).request(request("c"))
    [policy] = reply.context.ip_context.policies
    assert (getattr(policy, "from"), policy.proto, policy.dst_port) == ("172.16.1.101/32", "6", "6666")
    assert [r.prefix for r in policy.routes] == ["172.16.1.100/32"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- proto: tcp\n", "config.yaml: policy 1.proto: 'tcp' is not an IP protocol number"),
        ("- dstport: 70000\n", "policy 1.dstport: 70000 is not within 1-65535"),
        ("- from: 172.16.1.300/32\n", "policy 1.from: '172.16.1.300/32' is not a CIDR"),
        ("- routes: [{nexthop: 1.2.3.4}]\n", "policy 1.routes[0]: prefix is missing"),
        ("- color: red\n", "policy 1: unknown key 'color'"),
        ("from: 1.2.3.4/32\n", "expected a list of policies"),
    ],
)
def test_a_bad_policy_file_names_the_entry(text: str, message: str) -> None:
    with pytest.raises(PolicyRoutesError) as caught:
        parse_policy_routes(text, "config.yaml")
    assert message in str(caught.value)
