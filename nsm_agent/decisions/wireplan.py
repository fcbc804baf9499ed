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
    """The context names a malformed address, prefix or route."""


@dataclass(frozen=True)
class RoutePlan:
    dst: IPNetwork
    gateway: IPAddress | None  # None: the destination is on the link itself


@dataclass(frozen=True)
class PolicyPlan:
    """One policy route of the client's side: traffic matching it goes by its routes (in a
    table of the connection's own)."""

    src: IPNetwork | None  # None: any source
    proto: int | None
    dst_port: tuple[int, int] | None
    src_port: tuple[int, int] | None
    routes: tuple[RoutePlan, ...]


@dataclass(frozen=True)
class SidePlan:
    addrs: tuple[IPInterface, ...]
    routes: tuple[RoutePlan, ...]
    policies: tuple[PolicyPlan, ...] = ()


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


def _ports(field: str, value: str) -> tuple[int, int] | None:
    if not value:
        return None
    low, sep, high = value.partition("-")
    try:
        lo, hi = int(low), int(high) if sep else int(low)
    except ValueError:
        raise ContextError(f"{field}: {value!r} is not a port or LOW-HIGH") from None
    if not 1 <= lo <= hi <= 65535:
        raise ContextError(f"{field}: {value!r} is not within 1-65535 (LOW <= HIGH)")
    return lo, hi


def _policies(policies: Sequence[PolicyRoute], peers: Sequence[IPInterface]) -> tuple[PolicyPlan, ...]:
    if len(policies) > MAX_POLICIES:
        raise ContextError(f"policies: {len(policies)}; at most {MAX_POLICIES}")
    out = []
    for i, policy in enumerate(policies):
        where = f"policies[{i}]"
        source = getattr(policy, "from")
        try:
            src = ipaddress.ip_network(source, strict=False) if source else None
        except ValueError:
            raise ContextError(f"{where}.from: {source!r} is not a valid CIDR") from None
        proto = None
        if policy.proto:
            if not policy.proto.isdigit() or int(policy.proto) > 255:
                raise ContextError(f"{where}.proto: {policy.proto!r} is not an IP protocol number (0-255)")
            proto = int(policy.proto)
        routes = _routes(f"{where}.routes", policy.routes, peers)
        if src is not None and any(r.dst.version != src.version for r in routes):
            raise ContextError(f"{where}: routes of another family than from {source}")
        dst_port = _ports(f"{where}.dst_port", policy.dst_port)
        src_port = _ports(f"{where}.src_port", policy.src_port)
        out.append(PolicyPlan(src, proto, dst_port, src_port, routes))
    return tuple(out)


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
