"""Which prefixes a pod's new Request excludes: those of the pod's other connections, unless
both are services of one awareness group (upstream's excludedprefixes client). Pure.

Two endpoints may serve the same range (172.16.1.96/29 both, say). Without this, both would
hand one pod the same pair of addresses, and its two interfaces would clash. So each Request
names, in `excluded_prefixes`, the addresses and host routes of the pod's other connections.
Services the client declares mutually aware (`NSM_AWARENESS_GROUPS`) are kept apart some other
way (policy routing), so within a group nothing is excluded.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from nsm_api.connection_pb2 import Connection
from nsm_common.prefixes import address_inside
from nsm_k8s import Requested


@dataclass(frozen=True)
class Asked:
    """What a connection asked for, as an awareness group's URL names it."""

    service: str
    ifname: str
    labels: Mapping[str, str]

    @classmethod
    def of(cls, conn: Connection) -> Asked:
        return cls(conn.network_service, conn.mechanism.parameters.get("name", ""), dict(conn.labels))


def _covers(url: Requested, asked: Asked) -> bool:
    """URL names ASKED: the same service, the same interface (when the URL names one) and the
    URL's labels among the connection's (which also carry the location labels)."""
    if url.service != asked.service or (url.ifname and url.ifname != asked.ifname):
        return False
    return all(asked.labels.get(k) == v for k, v in url.labels.items())


def group_of(asked: Asked, groups: Sequence[Sequence[Requested]]) -> int:
    """The index of the first group naming ASKED, or -1."""
    return next((i for i, group in enumerate(groups) if any(_covers(u, asked) for u in group)), -1)


def connection_prefixes(conn: Connection) -> list[str]:
    """A connection's addresses and host routes, as prefixes (other routes are shared ranges,
    which upstream does not exclude either)."""
    ip = conn.context.ip_context
    out = [*ip.src_ip_addrs, *ip.dst_ip_addrs]
    for route in [*ip.src_routes, *ip.dst_routes]:
        try:
            net = ipaddress.ip_network(route.prefix, strict=False)
        except ValueError:
            continue
        if net.prefixlen == net.max_prefixlen:
            out.append(route.prefix)
    return list(dict.fromkeys(out))


def pod_connections(connections: Iterable[Connection], netns_inode: str, own_id: str) -> list[Connection]:
    """The agent's connections into the namespace of inode NETNS_INODE, but the one of OWN_ID."""
    out = []
    for conn in connections:
        first = conn.path.path_segments[0].id if conn.path.path_segments else conn.id
        if first != own_id and conn.mechanism.parameters.get("netnsInode") == netns_inode:
            out.append(conn)
    return out


def next_ifname(others: Iterable[Connection], prefix: str = "nsm-") -> str:
    """The first PREFIX-N (N from 1) that none of the pod's other connections has, as the
    annotation numbers its interfaces."""
    taken = {c.mechanism.parameters.get("name", "") for c in others}
    n = 1
    while f"{prefix}{n}" in taken:
        n += 1
    return f"{prefix}{n}"


def excluded_for(asked: Asked, others: Iterable[Connection], groups: Sequence[Sequence[Requested]]) -> list[str]:
    """The prefixes a Request for ASKED must exclude, given the pod's OTHER connections."""
    mine = group_of(asked, groups)
    out: list[str] = []
    for other in others:
        if mine >= 0 and group_of(Asked.of(other), groups) == mine:
            continue
        out.extend(connection_prefixes(other))
    return list(dict.fromkeys(out))


def overlap(conn: Connection, excluded: Sequence[str]) -> str | None:
    """Why the reply CONN is unusable: one of its addresses lies in an excluded prefix (an
    endpoint that ignored them); None when it is fine."""
    nets = []
    for prefix in excluded:
        try:
            nets.append(ipaddress.ip_network(prefix, strict=False))
        except ValueError:
            continue
    hit = address_inside(conn.context.ip_context, nets)
    if hit is None:
        return None
    return (
        f"endpoint {conn.network_service_endpoint_name or '?'} handed out {hit[0]}, inside the excluded "
        f"prefix {hit[1]} (another connection of this pod uses it)"
    )
