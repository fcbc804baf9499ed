"""From a ConnectionContext to what each side of an IP wire gets. Pure.

Checks everything an endpoint sent before any of it reaches the kernel.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from nsm_api.connectioncontext_pb2 import ConnectionContext, PolicyRoute, Route

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_POLICIES = 64
MIN_MTU = 68
MAX_MTU = 65535


class ContextError(ValueError):
    """The context names a malformed address, prefix, route or policy route."""


@dataclass(frozen=True)
class RoutePlan:
    dst: IPNetwork
    gateway: IPAddress | None  # None: the destination is on the link itself


@dataclass(frozen=True)
class PolicyPlan:
    """One policy route of the client's side: traffic matching it goes by its routes (in a
    table of the connection's own)."""

    src: IPNetwork | None  # None: any source
    proto: int | None  # an IP protocol number 1-255; None: any
    dst_port: tuple[int, int] | None  # (low, high), both included; None: any
    src_port: tuple[int, int] | None
    routes: tuple[RoutePlan, ...]


@dataclass(frozen=True)
class SidePlan:
    addrs: tuple[IPInterface, ...]
    routes: tuple[RoutePlan, ...]
    policies: tuple[PolicyPlan, ...] = ()  # the client's side only: NSM v1 installs them there


@dataclass(frozen=True)
class WirePlan:
    client: SidePlan
    endpoint: SidePlan
    mtu: int  # 0: leave the kernel's default


def _interfaces(field: str, values: Sequence[str]) -> tuple[IPInterface, ...]:
    out: list[IPInterface] = []
    for value in values:
        if "/" not in value:
            raise ContextError(f"{field}: {value!r} is not an address in CIDR form (ADDR/LEN)")
        try:
            out.append(ipaddress.ip_interface(value))
        except ValueError as exc:
            raise ContextError(f"{field}: {value!r} is not a valid CIDR address") from exc
    return tuple(out)


def _routes(field: str, routes: Sequence[Route], peers: Sequence[IPInterface]) -> tuple[RoutePlan, ...]:
    out: list[RoutePlan] = []
    for route in routes:
        try:
            dst = ipaddress.ip_network(route.prefix, strict=False)
        except ValueError as exc:
            raise ContextError(f"{field}: route prefix {route.prefix!r} is not a valid CIDR") from exc
        if route.nextHop:
            try:
                gw: IPAddress | None = ipaddress.ip_address(route.nextHop)
            except ValueError as exc:
                raise ContextError(f"{field}: nextHop {route.nextHop!r} is not a valid address") from exc
            if gw is not None and gw.version != dst.version:
                raise ContextError(f"{field}: nextHop {route.nextHop} is not of the family of {route.prefix}")
        else:
            peer = next((p.ip for p in peers if p.version == dst.version), None)
            if peer is None:
                raise ContextError(
                    f"{field}: route {route.prefix} has no nextHop and the other side has no IPv{dst.version} address"
                )
            # A route to the peer's own address goes straight onto the link.
            gw = None if dst.num_addresses == 1 and dst.network_address == peer else peer
        out.append(RoutePlan(dst=dst, gateway=gw))
    return tuple(out)


def _number(text: str) -> int | None:
    """`text` as a plain decimal number; None for anything else (signs, spaces, `_`, non-ASCII
    digits: Python's int() takes all of those, the kernel's tools do not)."""
    return int(text) if text.isascii() and text.isdigit() else None


def _ports(field: str, value: str) -> tuple[int, int] | None:
    """A port or a LOW-HIGH range as the kernel's rule takes it; "" (any port): None."""
    if not value:
        return None
    low, sep, high = value.partition("-")
    lo, hi = _number(low), _number(high) if sep else _number(low)
    if lo is None or hi is None:
        raise ContextError(f"{field}: {value!r} is not a port or LOW-HIGH")
    if not 1 <= lo <= hi <= 65535:
        raise ContextError(f"{field}: {value!r} is not within 1-65535 (LOW <= HIGH)")
    return lo, hi


def _proto(field: str, value: str) -> int | None:
    """An IP protocol number; "" and "0" mean any protocol (the kernel treats a rule's 0 so,
    and does not show it), both None so that a rule read back compares equal."""
    number = _number(value) if value else 0
    if number is None or number > 255:
        raise ContextError(f"{field}: {value!r} is not an IP protocol number (0-255)")
    return number or None


def _source(field: str, value: str) -> IPNetwork | None:
    """The source a policy matches; "" is any source."""
    if not value:
        return None
    if "/" not in value:
        raise ContextError(f"{field}: {value!r} is not a CIDR (ADDR/LEN)")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ContextError(f"{field}: {value!r} is not a valid CIDR") from None


def _policy(where: str, policy: PolicyRoute, peers: Sequence[IPInterface]) -> PolicyPlan:
    source = getattr(policy, "from")  # a Python keyword: not an attribute name
    src = _source(f"{where}.from", source)
    routes = _routes(f"{where}.routes", policy.routes, peers)
    other = next((r for r in routes if src is not None and r.dst.version != src.version), None)
    if other is not None:
        raise ContextError(f"{where}.from: {source!r} is not of the family of its route {other.dst}")
    return PolicyPlan(
        src=src,
        proto=_proto(f"{where}.proto", policy.proto),
        dst_port=_ports(f"{where}.dst_port", policy.dst_port),
        src_port=_ports(f"{where}.src_port", policy.src_port),
        routes=routes,
    )


def _policies(policies: Sequence[PolicyRoute], peers: Sequence[IPInterface]) -> tuple[PolicyPlan, ...]:
    """The client side's policy routes. Bounded: each is an `ip rule` in the client's namespace,
    and the kernel walks a namespace's rules one by one for every packet's route lookup."""
    if len(policies) > MAX_POLICIES:
        raise ContextError(f"policies: {len(policies)} of them; at most {MAX_POLICIES}")
    return tuple(_policy(f"policies[{i}]", policy, peers) for i, policy in enumerate(policies))


def plan_ip_wire(context: ConnectionContext) -> WirePlan:
    """Both sides' addresses, routes and the MTU of a wire, from the endpoint's context; ContextError when it
    cannot be built."""
    ip = context.ip_context
    src = _interfaces("src_ip_addrs", ip.src_ip_addrs)
    dst = _interfaces("dst_ip_addrs", ip.dst_ip_addrs)
    mtu = context.MTU
    if mtu and not MIN_MTU <= mtu <= MAX_MTU:
        raise ContextError(f"MTU {mtu} is outside {MIN_MTU}..{MAX_MTU}")
    return WirePlan(
        client=SidePlan(src, _routes("src_routes", ip.src_routes, dst), _policies(ip.policies, dst)),
        endpoint=SidePlan(dst, _routes("dst_routes", ip.dst_routes, src)),
        mtu=mtu,
    )
