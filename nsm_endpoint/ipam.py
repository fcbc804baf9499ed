"""Point-to-point address pools for endpoints. Pure.

Each connection gets two host addresses (/32 or /128) from the pool: one for the
endpoint's side, one for the client's. Allocation is idempotent per connection
id, avoids the request's excluded prefixes, and can re-adopt addresses that a
live connection brings back after the endpoint restarted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class PoolExhausted(RuntimeError):
    pass


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


class PointToPointPool:
    """Pairs of host addresses (endpoint, client) from one prefix, leased per connection id."""

    def __init__(self, cidr: str) -> None:
        self.network: IPNetwork = ipaddress.ip_network(cidr, strict=False)
        self._leases: dict[str, Lease] = {}
        self._used: set[IPAddress] = set()
        self._cursor = 0

    @property
    def leases(self) -> dict[str, Lease]:
        return dict(self._leases)

    def _usable(self, index: int) -> IPAddress | None:
        size = self.network.num_addresses
        if index >= size:
            return None
        addr = self.network.network_address + index
        # Skip the IPv4 network and broadcast addresses of the pool itself.
        if self.network.version == 4 and size > 2 and index in (0, size - 1):
            return None
        return addr

    def allocate(self, conn_id: str, excluded: Iterable[str] = ()) -> Lease:
        """The connection's lease, allocating one on first use."""
        lease = self._leases.get(conn_id)
        if lease is not None:
            return lease
        ex = [ipaddress.ip_network(p, strict=False) for p in excluded]
        found: list[IPAddress] = []
        size = self.network.num_addresses
        # A cursor keeps allocation near O(1) while the pool is far from full.
        steps = 0
        while len(found) < 2 and steps < min(size, 1 << 24):
            index = (self._cursor + steps) % size
            steps += 1
            addr = self._usable(index)
            if addr is None or addr in self._used or addr in found:
                continue
            if any(addr.version == n.version and addr in n for n in ex):
                continue
            found.append(addr)
        if len(found) < 2:
            raise PoolExhausted(f"address pool {self.network} has no free pair of addresses")
        self._cursor = (self._cursor + steps) % size
        lease = Lease(endpoint=found[0], client=found[1])
        self._take(conn_id, lease)
        return lease

    def adopt(self, conn_id: str, endpoint: str, client: str) -> Lease | None:
        """Take back a lease a refresh brings after a restart; None if it cannot be ours."""
        existing = self._leases.get(conn_id)
        if existing is not None:
            return existing
        try:
            ep = ipaddress.ip_interface(endpoint).ip
            cl = ipaddress.ip_interface(client).ip
        except ValueError:
            return None
        if ep not in self.network or cl not in self.network or ep == cl:
            return None
        if ep in self._used or cl in self._used:
            return None
        lease = Lease(endpoint=ep, client=cl)
        self._take(conn_id, lease)
        return lease

    def _take(self, conn_id: str, lease: Lease) -> None:
        self._leases[conn_id] = lease
        self._used.update((lease.endpoint, lease.client))

    def free(self, conn_id: str) -> bool:
        lease = self._leases.pop(conn_id, None)
        if lease is None:
            return False
        self._used.discard(lease.endpoint)
        self._used.discard(lease.client)
        return True
