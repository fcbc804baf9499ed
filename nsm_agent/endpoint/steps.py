"""The endpoint's own Request chain: point-to-point IPAM and its KERNEL answer."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import grpc

from nsm_agent.endpoint.ipam import Lease, PointToPointPool, PoolExhausted
from nsm_agent.pipeline.chain import Call, Next, Step
from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.connectioncontext_pb2 import Route
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.errors import NsmError, invalid


class PointToPointIpam(Step):
    """Two host addresses per connection, and routes from each side to the other."""

    def __init__(self, pool: PointToPointPool) -> None:
        self.pool = pool

    def _lease(self, conn: Connection) -> Lease:
        ip = conn.context.ip_context
        for prefix in ip.excluded_prefixes:
            try:
                ipaddress.ip_network(prefix, strict=False)
            except ValueError as exc:
                raise invalid(f"excluded_prefixes: {prefix!r} is not a valid CIDR") from exc
        if conn.id not in self.pool.leases and len(ip.dst_ip_addrs) == 1 and len(ip.src_ip_addrs) == 1:
            # A refresh after our restart brings back the addresses we gave.
            adopted = self.pool.adopt(conn.id, ip.dst_ip_addrs[0], ip.src_ip_addrs[0])
            if adopted is not None and not _excluded(adopted, ip.excluded_prefixes):
                return adopted
            if adopted is not None:
                self.pool.free(conn.id)
        try:
            return self.pool.allocate(conn.id, ip.excluded_prefixes)
        except PoolExhausted as exc:
            raise NsmError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from exc

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        conn = request.connection
        fresh = conn.id not in self.pool.leases
        lease = self._lease(conn)
        ep_cidr, client_cidr = lease.cidrs()
        ip = conn.context.ip_context
        del ip.src_ip_addrs[:]
        del ip.dst_ip_addrs[:]
        del ip.src_routes[:]
        del ip.dst_routes[:]
        ip.src_ip_addrs.append(client_cidr)
        ip.dst_ip_addrs.append(ep_cidr)
        ip.src_routes.append(Route(prefix=ep_cidr))
        ip.dst_routes.append(Route(prefix=client_cidr))
        try:
            return await nxt.request(request, call)
        except BaseException:
            if fresh:
                self.pool.free(conn.id)
            raise

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        self.pool.free(conn.id)
        await nxt.close(conn, call)


def _excluded(lease: Lease, excluded: Iterable[str]) -> bool:
    nets = [ipaddress.ip_network(p, strict=False) for p in excluded]
    return any(a.version == n.version and a in n for a in (lease.endpoint, lease.client) for n in nets)


class KernelAnswer(Step):
    """Answers with a KERNEL mechanism naming this endpoint's own namespace."""

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
