"""From a ConnectionContext to what each side of an IP wire gets. Pure.

Checks everything an endpoint sent before any of it reaches the kernel.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from nsm_api.connectioncontext_pb2 import ConnectionContext, Route

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MIN_MTU = 68
MAX_MTU = 65535


class ContextError(ValueError):
    """The context names a malformed address, prefix or route."""


@dataclass(frozen=True)
class RoutePlan:
    dst: IPNetwork
    gateway: IPAddress | None  # None: the destination is on the link itself


@dataclass(frozen=True)
class SidePlan:
    addrs: tuple[IPInterface, ...]
    routes: tuple[RoutePlan, ...]


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
        client=SidePlan(src, _routes("src_routes", ip.src_routes, dst)),
        endpoint=SidePlan(dst, _routes("dst_routes", ip.dst_routes, src)),
        mtu=mtu,
    )
