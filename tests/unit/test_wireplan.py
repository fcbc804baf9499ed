"""Checking an endpoint's context before it reaches the kernel."""

import ipaddress
import re

import pytest

from nsm_agent.decisions.wireplan import MAX_POLICIES, ContextError, PolicyPlan, RoutePlan, plan_ip_wire
from nsm_api.connectioncontext_pb2 import ConnectionContext, IPContext, PolicyRoute, Route


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


def policy(source: str = "", **fields: object) -> PolicyRoute:
    """A PolicyRoute; `from` is a Python keyword, so it is set apart."""
    out = PolicyRoute(**fields)  # type: ignore[arg-type]
    setattr(out, "from", source)
    return out


def with_policies(*policies: PolicyRoute) -> ConnectionContext:
    """The mutually-aware-nses addresses: the client 172.16.1.101, the endpoint 172.16.1.100."""
    return ctx(src_ip_addrs=["172.16.1.101/32"], dst_ip_addrs=["172.16.1.100/32"], policies=list(policies))


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_policies_plan_the_client_side_only() -> None:
    tcp = policy("172.16.1.101/32", proto="6", dst_port="6666", routes=[Route(prefix="172.16.1.100/32")])
    plan = plan_ip_wire(with_policies(tcp))
    assert plan.client.policies == (
        PolicyPlan(net("172.16.1.101/32"), 6, (6666, 6666), None, (RoutePlan(net("172.16.1.100/32"), None),)),
    )
    assert plan.endpoint.policies == ()


def test_policy_fields_as_the_kernel_takes_them() -> None:
    plan = plan_ip_wire(
        with_policies(
            policy(proto="17", src_port="1000-2000", routes=[Route(prefix="10.8.0.0/16")]),  # any source
            policy("10.1.2.3/24", proto="0", dst_port="80-80"),  # a host's bits go; proto 0 is any
            policy("fd00::/64", routes=[Route(prefix="fd10::/64", nextHop="fd00::9")]),
        )
    )
    first, second, third = plan.client.policies
    # Without nextHop a route goes by the endpoint's address, as src_routes do.
    assert first == PolicyPlan(
        None, 17, None, (1000, 2000), (RoutePlan(net("10.8.0.0/16"), ipaddress.ip_address("172.16.1.100")),)
    )
    assert second == PolicyPlan(net("10.1.2.0/24"), None, (80, 80), None, ())
    assert third.routes == (RoutePlan(net("fd10::/64"), ipaddress.ip_address("fd00::9")),)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"proto": "tcp"}, "policies[1].proto: 'tcp' is not an IP protocol number (0-255)"),
        ({"proto": "256"}, "policies[1].proto: '256' is not an IP protocol number (0-255)"),
        ({"proto": "-1"}, "policies[1].proto: '-1' is not an IP protocol number"),
        ({"proto": "\u0666"}, "policies[1].proto: '\u0666' is not an IP protocol number"),  # int() would take it
        ({"dst_port": "9-1"}, "policies[1].dst_port: '9-1' is not within 1-65535 (LOW <= HIGH)"),
        ({"dst_port": "0"}, "policies[1].dst_port: '0' is not within 1-65535"),
        ({"dst_port": "65536"}, "policies[1].dst_port: '65536' is not within 1-65535"),
        ({"dst_port": "http"}, "policies[1].dst_port: 'http' is not a port or LOW-HIGH"),
        ({"src_port": "1_000"}, "policies[1].src_port: '1_000' is not a port or LOW-HIGH"),
        ({"src_port": "5-"}, "policies[1].src_port: '5-' is not a port or LOW-HIGH"),
        ({"src_port": " 5"}, "policies[1].src_port: ' 5' is not a port or LOW-HIGH"),
        ({"source": "172.16.1.101"}, "policies[1].from: '172.16.1.101' is not a CIDR (ADDR/LEN)"),
        ({"source": "300.0.0.1/32"}, "policies[1].from: '300.0.0.1/32' is not a valid CIDR"),
        ({"source": "fd00::1/128"}, "policies[1].from: 'fd00::1/128' is not of the family of its route"),
        ({"routes": [Route(prefix="nowhere")]}, "policies[1].routes: route prefix 'nowhere' is not a valid CIDR"),
        ({"routes": [Route(prefix="fd10::/64")]}, "route fd10::/64 has no nextHop and the other side has no IPv6"),
    ],
)  # fmt: skip
def test_a_bad_policy_field_is_named_with_its_value(fields: dict[str, object], message: str) -> None:
    good = policy("172.16.1.101/32", proto="6", dst_port="6666", routes=[Route(prefix="172.16.1.100/32")])
    bad = policy(str(fields.pop("source", "172.16.1.101/32")), proto="6", dst_port="6666")
    bad.routes.extend(fields.pop("routes", [Route(prefix="172.16.1.100/32")]))  # type: ignore[arg-type]
    for name, value in fields.items():
        setattr(bad, name, value)
    with pytest.raises(ContextError, match=re.escape(message)):  # the second policy: its index is named
        plan_ip_wire(with_policies(good, bad))


def test_policies_are_bounded() -> None:
    many = [policy(dst_port=str(port)) for port in range(1, MAX_POLICIES + 2)]
    with pytest.raises(ContextError, match=f"policies: {MAX_POLICIES + 1} of them; at most {MAX_POLICIES}"):
        plan_ip_wire(with_policies(*many))
    assert len(plan_ip_wire(with_policies(*many[:MAX_POLICIES])).client.policies) == MAX_POLICIES
