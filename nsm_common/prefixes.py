"""Which of a connection's addresses lies in a set of prefixes (excluded prefixes, checked by
the agent against the node's and by the client against its pod's). Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from nsm_api.connectioncontext_pb2 import IPContext

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def address_inside(ip: IPContext, prefixes: Sequence[IPNetwork]) -> tuple[str, IPNetwork] | None:
    """The first address of the context inside PREFIXES, with the prefix; or None."""
    for cidr in [*ip.src_ip_addrs, *ip.dst_ip_addrs]:
        try:
            addr = ipaddress.ip_interface(cidr).ip
        except ValueError:
            continue
        hit = next((p for p in prefixes if p.version == addr.version and addr in p), None)
        if hit is not None:
            return cidr, hit
    return None
