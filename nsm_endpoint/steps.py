"""The endpoint's own Request chain: point-to-point IPAM and its KERNEL answer."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import grpc

from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.connectioncontext_pb2 import Route
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Call, Next, Step
from nsm_common.errors import NsmError, invalid
from nsm_endpoint.ipam import Lease, PointToPointPool, PoolExhausted


class PointToPointIpam(Step):
    """Two host addresses per connection from each pool (one pool per family for
    dual stack), and routes from each side to the other.

    Reads: the Request's IP context (excluded prefixes, addresses to re-adopt after a
    restart). Provides: the addresses and routes in it; nothing on the call.
    """

    def __init__(self, pools: list[PointToPointPool]) -> None:
        self.pools = pools

    def _held(self, conn_id: str) -> bool:
        return any(conn_id in pool.leases for pool in self.pools)

    def _lease(self, pool: PointToPointPool, conn: Connection) -> Lease:
        ip = conn.context.ip_context
        if conn.id not in pool.leases:
            # A refresh after our restart brings back the addresses we gave.
            ours_dst = [a for a in ip.dst_ip_addrs if _within(a, pool)]
            ours_src = [a for a in ip.src_ip_addrs if _within(a, pool)]
            if len(ours_dst) == 1 and len(ours_src) == 1:
                adopted = pool.adopt(conn.id, ours_dst[0], ours_src[0])
                if adopted is not None and not _excluded(adopted, ip.excluded_prefixes):
                    return adopted
                if adopted is not None:
                    pool.free(conn.id)
        try:
            return pool.allocate(conn.id, ip.excluded_prefixes)
        except PoolExhausted as exc:
            raise NsmError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from exc

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        conn = request.connection
        ip = conn.context.ip_context
        for prefix in ip.excluded_prefixes:
            try:
                ipaddress.ip_network(prefix, strict=False)
            except ValueError as exc:
                raise invalid(f"excluded_prefixes: {prefix!r} is not a valid CIDR") from exc
        fresh = not self._held(conn.id)
        try:
            leases = [self._lease(pool, conn) for pool in self.pools]
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


def _within(cidr: str, pool: PointToPointPool) -> bool:
    try:
        return ipaddress.ip_interface(cidr).ip in pool.network
    except ValueError:
        return False


def _excluded(lease: Lease, excluded: Iterable[str]) -> bool:
    nets = [ipaddress.ip_network(p, strict=False) for p in excluded]
    return any(a.version == n.version and a in n for a in (lease.endpoint, lease.client) for n in nets)


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
