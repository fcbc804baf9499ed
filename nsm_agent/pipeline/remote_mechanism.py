"""Agreeing a tunnel between two agents.

The client's agent offers REMOTE mechanisms with its side filled in (address,
port, a VNI free on its node, MTU); the endpoint's agent takes the first it
supports, keeps the VNI if it is free on its node too (or proposes another),
and fills in its side. Refreshes keep what was agreed.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import structlog

from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.decisions.tunnel import VXLAN, VXLAN_OVERHEAD, parse_vxlan, pod_mtu
from nsm_agent.pipeline.chain import Call, Next, Step, Tunnel
from nsm_agent.tunnels import Underlay, VniBook
from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.errors import NsmError, invalid

log = structlog.get_logger("nsm.agent")

VNI_ATTEMPTS = 3


@dataclass
class _Agreed:
    mechanism: Mechanism
    tunnel: Tunnel


def _mtu(underlay: Underlay) -> int:
    return pod_mtu(underlay.mtu, underlay.family, VXLAN_OVERHEAD)


class RemoteMechanismServer(Step):
    """On the endpoint's node: answer another agent's offer."""

    def __init__(self, netlink: NetlinkThread, underlay: Underlay | None, vnis: VniBook) -> None:
        self.netlink = netlink
        self.underlay = underlay
        self.vnis = vnis
        self._agreed: dict[str, _Agreed] = {}

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        offer = call.remote_offer
        if offer is None:
            return await nxt.request(request, call)
        if self.underlay is None:
            raise NsmError(grpc.StatusCode.UNAVAILABLE, "this agent has no tunnel address (--tunnel-ip)")
        conn_id = request.connection.id
        known = self._agreed.get(conn_id)
        if known is not None and known.mechanism.type == offer.type:
            agreed, fresh = known, False
        else:
            agreed, fresh = await self._agree(conn_id, offer), True
        call.tunnel = agreed.tunnel
        try:
            reply = await nxt.request(request, call)
        except BaseException:
            if fresh:
                self.vnis.release(agreed.tunnel.vni, conn_id)
            raise
        if fresh and known is not None:
            self.vnis.release(known.tunnel.vni, conn_id)
        self._agreed[conn_id] = agreed
        reply.mechanism.CopyFrom(agreed.mechanism)
        return reply

    async def _agree(self, conn_id: str, offer: Mechanism) -> _Agreed:
        assert self.underlay is not None
        if offer.type != VXLAN:
            raise invalid(f"mechanism {offer.type} is not supported here")
        params = parse_vxlan(offer.parameters, need_dst=False, default_port=self.vnis.port)
        assert params.src_ip is not None
        if params.src_ip.version != self.underlay.family:
            raise invalid(
                f"src_ip {params.src_ip} is IPv{params.src_ip.version}; this node tunnels from {self.underlay.ip}"
            )
        if params.src_port != self.vnis.port:
            raise invalid(f"src_port {params.src_port}: this node's VXLAN port is {self.vnis.port}")
        vni = await self.netlink.run(lambda nl: self.vnis.reserve(nl, conn_id, params.vni))
        mtu = min(x for x in (params.mtu, _mtu(self.underlay)) if x)
        mech = Mechanism()
        mech.CopyFrom(offer)
        mech.cls = "REMOTE"
        mech.parameters.update(
            {"dst_ip": self.underlay.ip, "dst_port": str(self.vnis.port), "vni": str(vni), "MTU": str(mtu)}
        )
        tunnel = Tunnel(VXLAN, vni, self.underlay.ip, str(params.src_ip), self.vnis.port, mtu)
        return _Agreed(mech, tunnel)

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        agreed = self._agreed.pop(conn.id, None)
        try:
            await nxt.close(conn, call)
        finally:
            if agreed is not None:
                self.vnis.release(agreed.tunnel.vni, conn.id)


class RemoteMechanismClient(Step):
    """On the client's node: offer tunnels to the endpoint's agent, and check its answer."""

    def __init__(self, netlink: NetlinkThread, underlay: Underlay | None, vnis: VniBook, offer: list[str]) -> None:
        self.netlink = netlink
        self.underlay = underlay
        self.vnis = vnis
        self.offer = offer
        self._agreed: dict[str, _Agreed] = {}

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        if not call.endpoint_remote:
            return await nxt.request(request, call)
        if self.underlay is None:
            raise NsmError(grpc.StatusCode.UNAVAILABLE, "this agent has no tunnel address (--tunnel-ip)")
        conn_id = request.connection.id
        known = self._agreed.get(conn_id)
        if known is not None:
            call.downstream_prefs = [known.mechanism]
            reply = await nxt.request(request, call)
            return self._accept(conn_id, reply, call, known.tunnel.vni)
        for _ in range(VNI_ATTEMPTS):
            proposal = await self.netlink.run(lambda nl: self.vnis.reserve(nl, conn_id))
            call.downstream_prefs = self._prefs(proposal)
            try:
                reply = await nxt.request(request, call)
            except BaseException:
                self.vnis.release(proposal, conn_id)
                raise
            try:
                chosen = parse_vxlan(reply.mechanism.parameters, need_dst=True).vni
            except NsmError as exc:
                self.vnis.release(proposal, conn_id)
                await nxt.close(reply, call)
                raise NsmError(grpc.StatusCode.INTERNAL, f"the endpoint's agent answered: {exc.message}") from exc
            if chosen == proposal or await self._take(conn_id, chosen):
                if chosen != proposal:
                    self.vnis.release(proposal, conn_id)
                return self._accept(conn_id, reply, call, chosen)
            # The other node chose a VNI taken here: give it back and ask again.
            self.vnis.release(proposal, conn_id)
            await nxt.close(reply, call)
        raise NsmError(grpc.StatusCode.RESOURCE_EXHAUSTED, "no VNI free on both nodes was found")

    async def _take(self, conn_id: str, vni: int) -> bool:
        return await self.netlink.run(lambda nl: self.vnis.take(nl, conn_id, vni))

    def _prefs(self, vni: int) -> list[Mechanism]:
        assert self.underlay is not None
        prefs = []
        for kind in self.offer:
            if kind != VXLAN:
                continue
            prefs.append(
                Mechanism(
                    cls="REMOTE",
                    type=VXLAN,
                    parameters={
                        "src_ip": self.underlay.ip,
                        "src_port": str(self.vnis.port),
                        "vni": str(vni),
                        "MTU": str(_mtu(self.underlay)),
                    },
                )
            )
        return prefs

    def _accept(self, conn_id: str, reply: Connection, call: Call, vni: int) -> Connection:
        assert self.underlay is not None
        mech = reply.mechanism
        try:
            params = parse_vxlan(mech.parameters, need_dst=True)
        except NsmError as exc:
            self.vnis.release(vni, conn_id)
            raise NsmError(grpc.StatusCode.INTERNAL, f"the endpoint's agent answered: {exc.message}") from exc
        assert params.dst_ip is not None
        stored = Mechanism()
        stored.CopyFrom(mech)
        tunnel = Tunnel(VXLAN, vni, self.underlay.ip, str(params.dst_ip), params.dst_port, params.mtu)
        self._agreed[conn_id] = _Agreed(stored, tunnel)
        call.tunnel = tunnel
        return reply

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        agreed = self._agreed.pop(conn.id, None)
        try:
            await nxt.close(conn, call)
        finally:
            if agreed is not None:
                self.vnis.release(agreed.tunnel.vni, conn.id)
