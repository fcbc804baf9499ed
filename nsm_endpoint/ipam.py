"""Point-to-point address pools for endpoints, and the IPAM policies. Pure.

Each connection gets two host addresses (/32 or /128) from each pool: one for the
endpoint's side, one for the client's. Allocation is idempotent per connection id,
avoids the Request's excluded prefixes, and (policy `polite`) keeps an address the
client already holds when it is free in the pool.

As upstream's point-to-point IPAM does, an IPv4 pool hands out every address of its
prefix, the first and the last too: they are host routes, never a subnet, so
172.16.1.96/29 gives the pairs .96/.97, .98/.99, and so on. An IPv6 pool skips its
first address, the subnet-router anycast address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class PoolExhausted(RuntimeError):
    pass


class IpamPolicy(StrEnum):
    """What an endpoint does with the addresses a Request brings (upstream's NSM_IPAM_POLICY).

    polite: an address the client already holds is kept when it is in this pool, free and
        not excluded (a healed or restarted connection keeps its address). Upstream's
        default policy keeps any address the client sends, even one outside the pool;
        ours keeps only what this pool could have given, so no stale address or route
        of another endpoint stays on the wire.
    strict: the addresses come from this endpoint's own leases only; whatever the Request
        brings is replaced (after an endpoint restart its clients get new addresses).
    """

    POLITE = "polite"
    STRICT = "strict"

    @classmethod
    def parse(cls, value: str) -> IpamPolicy:
        """The policy named VALUE (upstream's `default` is `polite`); ValueError naming the choices."""
        name = value.strip().lower()
        if name == "default":
            return cls.POLITE
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPAM policy: use polite (upstream: default) or strict") from None


@dataclass(frozen=True)
class Lease:
    endpoint: IPAddress
    client: IPAddress

    @property
    def prefixlen(self) -> int:
        return self.endpoint.max_prefixlen

    def cidrs(self) -> tuple[str, str]:
        """(endpoint CIDR, client CIDR)."""
        return f"{self.endpoint}/{self.prefixlen}", f"{self.client}/{self.prefixlen}"


def parse_excluded(prefixes: Iterable[str]) -> list[IPNetwork]:
    """The Request's excluded prefixes as networks; ValueError naming the first bad one."""
    out: list[IPNetwork] = []
    for prefix in prefixes:
        try:
            out.append(ipaddress.ip_network(prefix, strict=False))
        except ValueError:
            raise ValueError(f"excluded_prefixes: {prefix!r} is not a valid CIDR") from None
    return out


def is_excluded(addr: IPAddress, excluded: Sequence[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in excluded)


def host_of(cidr: str) -> IPAddress | None:
    """The address of ADDR/LEN, or None when it is not one."""
    try:
        return ipaddress.ip_interface(cidr).ip
    except ValueError:
        return None


def parse_pools(values: Iterable[str]) -> list[str]:
    """Pool CIDRs as given on a command line: repeated, or comma lists (upstream's
    NSM_CIDR_PREFIX); ValueError naming the bad entry. Pools may not overlap."""
    out: list[IPNetwork] = []
    for value in [v.strip() for item in values for v in item.split(",")]:
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR such as 10.60.0.0/24 or fd00:60::/64") from None
        PointToPointPool(str(net))  # big enough
        clash = next((o for o in out if o.version == net.version and o.overlaps(net)), None)  # type: ignore[arg-type]
        if clash is not None:
            raise ValueError(f"{value!r} overlaps the pool {clash}")
        out.append(net)
    if not out:
        raise ValueError("no pool given")
    return [str(n) for n in out]


class PointToPointPool:
    """Pairs of host addresses (endpoint, client) from one prefix, leased per connection id."""

    def __init__(self, cidr: str) -> None:
        self.network: IPNetwork = ipaddress.ip_network(cidr, strict=False)
        self._first = 1 if self.network.version == 6 else 0
        if self.network.num_addresses - self._first < 2:
            raise ValueError(f"{cidr!r} is too small for a point-to-point pool (two addresses at least)")
        self._leases: dict[str, Lease] = {}
        self._used: set[IPAddress] = set()
        self._cursor = 0

    @property
    def leases(self) -> dict[str, Lease]:
        return dict(self._leases)

    def usable(self, addr: IPAddress) -> bool:
        """ADDR is one this pool may hand out (free or not)."""
        return addr in self.network and int(addr) - int(self.network.network_address) >= self._first

    def _free_address(self, addr: IPAddress | None, excluded: Sequence[IPNetwork]) -> bool:
        return addr is not None and self.usable(addr) and addr not in self._used and not is_excluded(addr, excluded)

    def allocate(
        self,
        conn_id: str,
        excluded: Iterable[str] = (),
        prefer: tuple[IPAddress | None, IPAddress | None] = (None, None),
    ) -> Lease:
        """The connection's lease, allocating one on first use. PREFER (endpoint, client):
        addresses to take when they are free here and not excluded (policy polite)."""
        lease = self._leases.get(conn_id)
        if lease is not None:
            return lease
        ex = parse_excluded(excluded)
        chosen: list[IPAddress | None] = [a if self._free_address(a, ex) else None for a in prefer]
        if chosen[0] is not None and chosen[0] == chosen[1]:
            chosen[1] = None
        taken = {a for a in chosen if a is not None}
        size = self.network.num_addresses
        steps = 0
        # A cursor keeps allocation near O(1) while the pool is far from full.
        while None in chosen and steps < min(size, 1 << 24):
            index = (self._cursor + steps) % size
            steps += 1
            addr = self.network.network_address + index
            if addr in taken or not self._free_address(addr, ex):
                continue
            chosen[chosen.index(None)] = addr
            taken.add(addr)
        endpoint, client = chosen
        if endpoint is None or client is None:
            raise PoolExhausted(f"address pool {self.network} has no free pair of addresses")
        self._cursor = (self._cursor + steps) % size
        lease = Lease(endpoint=endpoint, client=client)
        self._leases[conn_id] = lease
        self._used.update((lease.endpoint, lease.client))
        return lease

    def adopt(self, conn_id: str, endpoint: str, client: str) -> Lease | None:
        """Take back both addresses a refresh brings after a restart; None if they cannot be ours."""
        existing = self._leases.get(conn_id)
        if existing is not None:
            return existing
        ep, cl = host_of(endpoint), host_of(client)
        if ep is None or cl is None or ep == cl or not (self._free_address(ep, []) and self._free_address(cl, [])):
            return None
        return self.allocate(conn_id, prefer=(ep, cl))

    def free(self, conn_id: str) -> bool:
        lease = self._leases.pop(conn_id, None)
        if lease is None:
            return False
        self._used.discard(lease.endpoint)
        self._used.discard(lease.client)
        return True
