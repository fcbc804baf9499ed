"""Checking an endpoint's context before it reaches the kernel."""

import ipaddress
import re

import pytest

from nsm_agent.decisions.wireplan import ContextError, plan_ip_wire
from nsm_api.connectioncontext_pb2 import ConnectionContext, IPContext, Route


def ctx(**ip: object) -> ConnectionContext:
    return ConnectionContext(ip_context=IPContext(**ip))  # type: ignore[arg-type]


def test_point_to_point_plan() -> None:
    plan = plan_ip_wire(
        ctx(
            src_ip_addrs=["10.0.0.2/32"],
            dst_ip_addrs=["10.0.0.1/32"],
            src_routes=[Route(prefix="10.0.0.1/32"), Route(prefix="10.9.0.0/16")],
            dst_routes=[Route(prefix="10.0.0.2/32")],
        )
    )
    assert plan.client.addrs == (ipaddress.ip_interface("10.0.0.2/32"),)
    first, second = plan.client.routes
    assert first.gateway is None  # the peer itself: straight onto the link
    assert second.gateway == ipaddress.ip_address("10.0.0.1")
    assert plan.endpoint.routes[0].gateway is None


def test_ipv6_and_explicit_next_hop() -> None:
    plan = plan_ip_wire(
        ctx(
            src_ip_addrs=["fd00::2/128"],
            dst_ip_addrs=["fd00::1/128"],
            src_routes=[Route(prefix="fd10::/64", nextHop="fd00::1")],
        )
    )
    assert plan.client.routes[0].gateway == ipaddress.ip_address("fd00::1")


@pytest.mark.parametrize(
    ("ip", "words"),
    [
        ({"src_ip_addrs": ["10.0.0.300/32"]}, "not a valid CIDR"),
        ({"src_ip_addrs": ["10.0.0.2"]}, "CIDR form"),
        ({"dst_ip_addrs": ["garbage/8"]}, "dst_ip_addrs"),
        ({"src_ip_addrs": ["10.0.0.2/32"], "src_routes": [Route(prefix="nope")]}, "route prefix"),
        ({"src_ip_addrs": ["10.0.0.2/32"], "src_routes": [Route(prefix="10.1.0.0/16")]}, "no nextHop"),
        ({"src_routes": [Route(prefix="10.1.0.0/16", nextHop="x")]}, "nextHop 'x'"),
        ({"src_routes": [Route(prefix="10.1.0.0/16", nextHop="fd00::1")]}, "family"),
    ],
)
def test_malformed_context_is_named(ip: dict[str, object], words: str) -> None:
    with pytest.raises(ContextError) as info:
        plan_ip_wire(ctx(**ip))
    assert words in str(info.value)


def test_mtu_bounds() -> None:
    with pytest.raises(ContextError, match="MTU"):
        plan_ip_wire(ConnectionContext(MTU=20))
    assert plan_ip_wire(ConnectionContext(MTU=1400)).mtu == 1400


def test_policies_plan_the_client_side_and_bad_ones_are_named() -> None:
    from nsm_agent.decisions.wireplan import PolicyPlan, RoutePlan
    from nsm_api.connectioncontext_pb2 import PolicyRoute

    ctx = ConnectionContext()
    ip = ctx.ip_context
    ip.src_ip_addrs.append("172.16.1.101/32")
    ip.dst_ip_addrs.append("172.16.1.100/32")
    policy = PolicyRoute(proto="6", dst_port="6666", routes=[Route(prefix="172.16.1.100/32")])
    setattr(policy, "from", "172.16.1.101/32")
    ip.policies.append(policy)
    plan = plan_ip_wire(ctx)
    assert plan.client.policies == (
        PolicyPlan(
            ipaddress.ip_network("172.16.1.101/32"), 6, (6666, 6666), None,
            (RoutePlan(ipaddress.ip_network("172.16.1.100/32"), None),),
        ),
    )  # fmt: skip
    assert plan.endpoint.policies == ()
    for change, message in [
        (lambda p: setattr(p, "proto", "tcp"), "policies[0].proto: 'tcp' is not an IP protocol number"),
        (lambda p: setattr(p, "dst_port", "9-1"), "policies[0].dst_port: '9-1' is not within 1-65535"),
        (lambda p: setattr(p, "from", "fd00::1/128"), "routes of another family"),
    ]:
        bad = ConnectionContext()
        bad.CopyFrom(ctx)
        change(bad.ip_context.policies[0])
        with pytest.raises(ContextError, match=re.escape(message)):
            plan_ip_wire(bad)
