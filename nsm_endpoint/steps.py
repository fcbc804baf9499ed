"""The endpoint's own Request chain: point-to-point IPAM and its KERNEL answer."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc

from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.connectioncontext_pb2 import PolicyRoute, Route
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Call, Next, Step
from nsm_common.errors import NsmError, invalid
from nsm_endpoint.ipam import (
    IPAddress,
    IpamPolicy,
    IPNetwork,
    Lease,
    PointToPointPool,
    PoolExhausted,
    host_of,
    is_excluded,
    parse_excluded,
)


class PointToPointIpam(Step):
    """Two host addresses per connection from each pool (several pools: dual stack, or
    more addresses of one family), and routes from each side to the other.

    Reads: the Request's IP context: its excluded prefixes (a lease inside them is never
    given, and one that became excluded is replaced), and under policy polite the
    addresses the client already holds. Provides: the addresses and routes in it, and
    nothing else (stale ones of another endpoint are dropped); nothing on the call.
    """

    def __init__(self, pools: list[PointToPointPool], policy: IpamPolicy = IpamPolicy.POLITE) -> None:
        self.pools = pools
        self.policy = policy

    def _held(self, conn_id: str) -> bool:
        return any(conn_id in pool.leases for pool in self.pools)

    def _lease(self, pool: PointToPointPool, conn: Connection, excluded: list[IPNetwork]) -> Lease:
        held = pool.leases.get(conn.id)
        if held is not None and (is_excluded(held.endpoint, excluded) or is_excluded(held.client, excluded)):
            pool.free(conn.id)  # its address became excluded: the connection moves to another
        ip = conn.context.ip_context
        prefer: tuple[IPAddress | None, IPAddress | None] = (None, None)
        if self.policy is IpamPolicy.POLITE:
            prefer = (_in_pool(ip.dst_ip_addrs, pool), _in_pool(ip.src_ip_addrs, pool))
        try:
            return pool.allocate(conn.id, ip.excluded_prefixes, prefer)
        except PoolExhausted as exc:
            raise NsmError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from exc

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        conn = request.connection
        ip = conn.context.ip_context
        try:
            excluded = parse_excluded(ip.excluded_prefixes)
        except ValueError as exc:
            raise invalid(str(exc)) from exc
        fresh = not self._held(conn.id)
        try:
            leases = [self._lease(pool, conn, excluded) for pool in self.pools]
            del ip.src_ip_addrs[:]
            del ip.dst_ip_addrs[:]
            del ip.src_routes[:]
            del ip.dst_routes[:]
            for lease in leases:
                ep_cidr, client_cidr = lease.cidrs()
                ip.src_ip_addrs.append(client_cidr)
                ip.dst_ip_addrs.append(ep_cidr)
                ip.src_routes.append(Route(prefix=ep_cidr))
                ip.dst_routes.append(Route(prefix=client_cidr))
            return await nxt.request(request, call)
        except BaseException:
            if fresh:
                self._free(conn.id)
            raise

    def _free(self, conn_id: str) -> None:
        for pool in self.pools:
            pool.free(conn_id)

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        self._free(conn.id)
        await nxt.close(conn, call)


def _in_pool(cidrs: Iterable[str], pool: PointToPointPool) -> IPAddress | None:
    """The first of CIDRS whose address this pool may hand out."""
    for cidr in cidrs:
        addr = host_of(cidr)
        if addr is not None and pool.usable(addr):
            return addr
    return None


class KernelAnswer(Step):
    """Answers with a KERNEL mechanism naming this endpoint's own namespace.

    Reads: the Request's mechanism preferences. Provides: the reply's mechanism.
    """

    def __init__(self, dev: int, ino: int) -> None:
        self.mechanism = Mechanism(
            cls="LOCAL",
            type="KERNEL",
            parameters={"inodeURL": f"inode://{dev}/{ino}", "netnsInode": str(ino)},
        )

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        kinds = [m.type for m in request.mechanism_preferences]
        if kinds and "KERNEL" not in kinds:
            raise invalid(f"this endpoint offers only KERNEL, not {', '.join(kinds)}")
        reply = await nxt.request(request, call)
        reply.mechanism.CopyFrom(self.mechanism)
        return reply


class PolicyRoutes(Step):
    """The endpoint's policy routes for the client's side (upstream's policy-based routing:
    traffic that matches a policy goes by its routes, in a table of the connection's own).

    Reads: nothing of the Request. Provides: the reply's `ip_context.policies`.
    """

    def __init__(self, policies: Sequence[PolicyRoute]) -> None:
        self.policies = list(policies)

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        reply = await nxt.request(request, call)
        ip = reply.context.ip_context
        del ip.policies[:]
        ip.policies.extend(self.policies)
        return reply
