"""Agreeing a tunnel between two agents.

The client's agent offers REMOTE mechanisms with its side filled in (address,
port, public key for WireGuard, a VNI free on its node, MTU); the endpoint's
agent takes the first it supports, keeps the VNI if it is free on its node too
(or proposes another), and fills in its side. Refreshes keep what was agreed.

Both kinds carry each connection as its own VXLAN device: straight over the
underlay (VXLAN), or between the nodes' inner addresses inside the node's one
WireGuard device (WIREGUARD; the `vni` parameter is our extension).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import structlog

from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.datapath.path_mtu import PathMtus
from nsm_agent.datapath.tunnels import Underlay, VniBook
from nsm_agent.datapath.wireguard import WireGuardDevice, WireGuardError
from nsm_agent.decisions.interdomain import (
    crosses_domains,
    nothing_to_offer_between_domains,
    offered_between_domains,
    refused_between_domains,
)
from nsm_agent.decisions.traversal import RelayRef, agreed_relays, parse_relay, relay_params
from nsm_agent.decisions.tunnel import (
    VXLAN,
    VXLAN_OVERHEAD,
    WIREGUARD,
    WIREGUARD_OVERHEAD,
    WIREGUARD_PORT,
    parse_public_key,
    parse_vxlan,
    pod_mtu,
)
from nsm_agent.pipeline.select import Chosen
from nsm_agent.pipeline.validate import PeerOffer
from nsm_agent.traversal.paths import Traversal
from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Call, Next, Step
from nsm_common.errors import NsmError, invalid

log = structlog.get_logger("nsm.agent")

VNI_ATTEMPTS = 3


@dataclass(frozen=True)
class Tunnel:
    """This node's end of an agreed tunnel to the other node."""

    type: str
    vni: int
    local_ip: str
    remote_ip: str
    port: int
    mtu: int


@dataclass(frozen=True)
class TunnelToClient:
    """On the endpoint's node: the tunnel agreed with the client's agent (for TunnelWire)."""

    tunnel: Tunnel


@dataclass(frozen=True)
class DownstreamOffer:
    """What this hop offers the next one: REMOTE mechanisms for the endpoint's agent, or
    nothing (the endpoint is on this node: KERNEL)."""

    mechanisms: list[Mechanism]


@dataclass
class _Agreed:
    # Serialized: a parsed message keeps an arena of its own, about 1.2 KiB.
    mechanism_wire: bytes
    tunnel: Tunnel
    peer_key: str = ""  # WireGuard: the other node's public key

    @property
    def mechanism(self) -> Mechanism:
        return Mechanism.FromString(self.mechanism_wire)


class TunnelKinds:
    """What this node can offer and accept, and the state both sides share."""

    def __init__(
        self,
        netlink: NetlinkThread,
        underlay: Underlay | None,
        vnis: VniBook,
        wireguard: WireGuardDevice | None,
        enabled: list[str],
        public_ip: str = "",
        path_mtus: PathMtus | None = None,
        traversal: Traversal | None = None,
    ) -> None:
        self.netlink = netlink
        self.underlay = underlay
        self.vnis = vnis
        self.wireguard = wireguard
        self.enabled = enabled
        self.public_ip = public_ip  # where other domains reach this node's tunnels (--public-ip)
        self.path_mtus = path_mtus  # probed toward nodes of other domains
        self.traversal = traversal  # WireGuard through NAT, toward nodes of other domains
        # On the client's node: what the endpoint's agent agreed, per connection. Its owner
        # is RemoteMechanismClient; TunnelWire, above it, reads it once the answer is back.
        self.toward_endpoint: dict[str, _Agreed] = {}

    def agreed_toward_endpoint(self, conn_id: str) -> Tunnel | None:
        """On the client's node: the tunnel agreed for `conn_id` with the endpoint's agent."""
        agreed = self.toward_endpoint.get(conn_id)
        return agreed.tunnel if agreed is not None else None

    def supported(self) -> tuple[str, ...]:
        """The kinds this agent offers and accepts, in its preferred order."""
        able = (VXLAN, WIREGUARD) if self.wireguard is not None else (VXLAN,)
        return tuple(k for k in self.enabled if k in able)

    def mtu(self, kind: str, path_mtu: int | None = None) -> int:
        """The pod MTU over a tunnel of KIND: over the underlay, or a path of PATH_MTU bytes."""
        assert self.underlay is not None
        outer = path_mtu or self.underlay.mtu
        if kind == VXLAN:
            return pod_mtu(outer, self.underlay.family, VXLAN_OVERHEAD)
        # VXLAN between IPv6 inner addresses, inside WireGuard over the underlay.
        return pod_mtu(outer, self.underlay.family, WIREGUARD_OVERHEAD) - VXLAN_OVERHEAD[6]

    async def mtu_toward(self, kind: str, address: str) -> int:
        """The pod MTU over a tunnel of KIND to a node of another domain at ADDRESS: from the
        probed path MTU when the probe is answered, else from the underlay's."""
        # The probe searches up to the underlay's MTU: what it finds is never larger.
        return self.mtu(kind, await self.path_mtus.to(address) if self.path_mtus is not None else None)

    async def ready_to_cross(self, offer: dict[str, str] | None = None) -> None:
        """Before this node's side goes to another domain: its NAT mapping, learned (a second at
        most), from its domain's relays or the one the client's OFFER names."""
        if self.traversal is not None:
            await self.traversal.ready(parse_relay(offer, "src") if offer else None)

    def my_side(
        self, kind: str, vni: int, prefix: str, crossing: bool = False, via: RelayRef | None = None
    ) -> dict[str, str]:
        """This node's parameters for a REMOTE mechanism of `kind` (address, port, key, MTU, VNI);
        CROSSING: for a peer in another domain, which reaches this node's WireGuard port where
        its NAT maps it (learned from a reflector: this domain's, else VIA, the one the peer
        named), else at its public address; and the relay this node offers, if its domain has one."""
        assert self.underlay is not None
        ip = self.public_ip if crossing and self.public_ip else self.underlay.ip
        side = {f"{prefix}_ip": ip, "vni": str(vni), "MTU": str(self.mtu(kind))}
        if kind == VXLAN:
            side[f"{prefix}_port"] = str(self.vnis.port)
        else:
            assert self.wireguard is not None
            side[f"{prefix}_port"] = str(self.wireguard.port)
            side[f"{prefix}_public_key"] = self.wireguard.keys.public
            traversal = self.traversal
            if crossing and traversal is not None:
                mapping = traversal.mapping_via(via)
                if mapping is not None:
                    side[f"{prefix}_ip"], side[f"{prefix}_port"] = mapping[0], str(mapping[1])
                relay = traversal.offered_relay()
                if relay is not None:
                    side.update(relay_params(relay, prefix))
        return side

    async def tunnel(
        self, conn_id: str, kind: str, params: dict[str, str], peer: str, vni: int, mtu: int, crossing: bool = False
    ) -> Tunnel:
        """Set up what the tunnel to the peer node needs; `peer` is "src" or "dst". CROSSING: the
        peer is in another domain, and the path to it is followed through NAT."""
        assert self.underlay is not None
        vx = parse_vxlan(params, need_dst=True, default_port=self.vnis.port)
        remote_ip = vx.src_ip if peer == "src" else vx.dst_ip
        assert remote_ip is not None
        if remote_ip.version != self.underlay.family:
            raise invalid(f"{peer}_ip {remote_ip} is IPv{remote_ip.version}; this node tunnels from {self.underlay.ip}")
        if kind == VXLAN:
            port = vx.src_port if peer == "src" else vx.dst_port
            if port != self.vnis.port:
                raise invalid(f"{peer}_port {port}: this node's VXLAN port is {self.vnis.port}")
            return Tunnel(VXLAN, vni, self.underlay.ip, str(remote_ip), self.vnis.port, mtu)
        wg = self.wireguard
        assert wg is not None
        parse_public_key(params, f"{peer}_public_key")
        key = params[f"{peer}_public_key"]
        port = int(params.get(f"{peer}_port") or WIREGUARD_PORT)
        relays = agreed_relays(params) if crossing else ()  # checked before anything is set up
        try:
            inner = await wg.use_peer(self.netlink, conn_id, key, str(remote_ip), port)
        except WireGuardError as exc:
            raise NsmError(grpc.StatusCode.UNAVAILABLE, f"WireGuard: {exc}") from exc
        if crossing and self.traversal is not None:
            self.traversal.follow(key, (str(remote_ip), port), relays, kept=wg.kept_endpoint(key))
        return Tunnel(WIREGUARD, vni, str(wg.inner), inner, self.vnis.port, mtu)

    async def release(self, conn_id: str, agreed: _Agreed) -> None:
        self.vnis.release(agreed.tunnel.vni, conn_id)
        wg = self.wireguard
        if agreed.peer_key and wg is not None:
            try:
                await wg.release(self.netlink, conn_id, agreed.peer_key)
            except WireGuardError as exc:  # the Close still succeeds; the device is checked when next used
                log.warning("releasing a WireGuard peer failed", id=conn_id, error=str(exc))
            if self.traversal is not None and agreed.peer_key not in wg.peers:
                self.traversal.forget(agreed.peer_key)


class _TunnelStep(Step):
    """Keeps what was agreed per connection, and gives it back on Close."""

    def __init__(self, kinds: TunnelKinds, agreed: dict[str, _Agreed] | None = None) -> None:
        self.kinds = kinds
        self._agreed: dict[str, _Agreed] = {} if agreed is None else agreed

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        agreed = self._agreed.pop(conn.id, None)
        try:
            await nxt.close(conn, call)
        finally:
            if agreed is not None:
                await self.kinds.release(conn.id, agreed)


def _no_underlay() -> NsmError:
    return NsmError(grpc.StatusCode.UNAVAILABLE, "this agent has no tunnel address (--tunnel-ip)")


class RemoteMechanismServer(_TunnelStep):
    """On the endpoint's node: answer another agent's offer.

    Reads: `PeerOffer`. Provides: `TunnelToClient` (this node's end, for TunnelWire), and this
    node's side in the reply's mechanism.
    """

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        peer = call.get(PeerOffer)
        if peer is None:
            return await nxt.request(request, call)
        offer = peer.mechanism
        if self.kinds.underlay is None:
            raise _no_underlay()
        conn_id = request.connection.id
        known = self._agreed.get(conn_id)
        if known is not None and known.mechanism.type == offer.type:
            agreed, fresh = known, False
        else:
            agreed, fresh = await self._agree(conn_id, offer, crosses_domains(request.connection)), True
        call.put(TunnelToClient(agreed.tunnel))
        try:
            reply = await nxt.request(request, call)
        except BaseException:
            if fresh:
                await self.kinds.release(conn_id, agreed)
            raise
        if fresh and known is not None:
            await self.kinds.release(conn_id, known)
        self._agreed[conn_id] = agreed
        reply.mechanism.CopyFrom(agreed.mechanism)
        return reply

    async def _agree(self, conn_id: str, offer: Mechanism, crossing: bool) -> _Agreed:
        if offer.type not in self.kinds.supported():
            raise invalid(f"mechanism {offer.type} is not supported by this agent")
        problem = refused_between_domains(offer.type) if crossing else None
        if problem:
            raise invalid(problem)
        params = parse_vxlan(offer.parameters, need_dst=False, default_port=self.kinds.vnis.port)
        if offer.type == WIREGUARD:
            parse_public_key(offer.parameters, "src_public_key")
        # Probed before anything is reserved: a Request cancelled meanwhile leaves nothing.
        if crossing and params.src_ip is not None:
            own = await self.kinds.mtu_toward(offer.type, str(params.src_ip))
        else:
            own = self.kinds.mtu(offer.type)
        if crossing:
            await self.kinds.ready_to_cross(dict(offer.parameters))
        vni = await self.kinds.netlink.run(lambda nl: self.kinds.vnis.reserve(nl, conn_id, params.vni))
        mtu = min(x for x in (params.mtu, own) if x)
        mech = Mechanism()
        mech.CopyFrom(offer)
        mech.cls = "REMOTE"
        via = parse_relay(offer.parameters, "src") if crossing else None
        mech.parameters.update(self.kinds.my_side(offer.type, vni, "dst", crossing, via))
        mech.parameters["MTU"] = str(mtu)
        try:
            tunnel = await self.kinds.tunnel(conn_id, offer.type, dict(mech.parameters), "src", vni, mtu, crossing)
        except BaseException:
            self.kinds.vnis.release(vni, conn_id)
            raise
        peer_key = offer.parameters.get("src_public_key", "") if offer.type == WIREGUARD else ""
        return _Agreed(mech.SerializeToString(), tunnel, peer_key)


class RemoteMechanismClient(_TunnelStep):
    """On the client's node: offer tunnels to the endpoint's agent, and check its answer.

    Reads: `Chosen` (is the endpoint remote). Provides: `DownstreamOffer` (for ConnectEndpoint),
    and the agreed tunnel through `TunnelKinds.agreed_toward_endpoint` (for TunnelWire, once
    the answer is back).
    """

    def __init__(self, kinds: TunnelKinds, offer: list[str]) -> None:
        super().__init__(kinds, kinds.toward_endpoint)
        self.offer = [k for k in offer if k in kinds.supported()]

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        conn_id = request.connection.id
        where = call.get(Chosen)
        if where is None or not where.remote:
            call.put(DownstreamOffer([]))
            reply = await nxt.request(request, call)
            stale = self._agreed.pop(conn_id, None)
            if stale is not None:  # the endpoint is reached on this node now: the tunnel goes
                await self.kinds.release(conn_id, stale)
            return reply
        if self.kinds.underlay is None:
            raise _no_underlay()
        known = self._agreed.get(conn_id)
        if known is not None:
            call.put(DownstreamOffer([known.mechanism]))
            reply = await nxt.request(request, call)
            return await self._accept(conn_id, reply, call, known.tunnel.vni, nxt, known)
        crossing = crosses_domains(request.connection)
        kinds = offered_between_domains(self.offer) if crossing else self.offer
        if not kinds:
            raise NsmError(grpc.StatusCode.FAILED_PRECONDITION, nothing_to_offer_between_domains(self.offer))
        if crossing:
            await self.kinds.ready_to_cross()
        vnis = self.kinds.vnis
        for _ in range(VNI_ATTEMPTS):
            proposal = await self.kinds.netlink.run(lambda nl: vnis.reserve(nl, conn_id))
            offer = [
                Mechanism(cls="REMOTE", type=kind, parameters=self.kinds.my_side(kind, proposal, "src", crossing))
                for kind in kinds
            ]
            call.put(DownstreamOffer(offer))
            try:
                reply = await nxt.request(request, call)
            except BaseException:
                vnis.release(proposal, conn_id)
                raise
            try:
                chosen = parse_vxlan(reply.mechanism.parameters, need_dst=True).vni
            except NsmError as exc:
                vnis.release(proposal, conn_id)
                await nxt.close(reply, call)
                raise NsmError(grpc.StatusCode.INTERNAL, f"the endpoint's agent answered: {exc.message}") from exc
            if chosen == proposal or await self._take(conn_id, chosen):
                if chosen != proposal:
                    vnis.release(proposal, conn_id)
                return await self._accept(conn_id, reply, call, chosen, nxt, None)
            # The other node chose a VNI taken here: give it back and ask again.
            vnis.release(proposal, conn_id)
            await nxt.close(reply, call)
        raise NsmError(grpc.StatusCode.RESOURCE_EXHAUSTED, "no VNI free on both nodes was found")

    async def _take(self, conn_id: str, vni: int) -> bool:
        return await self.kinds.netlink.run(lambda nl: self.kinds.vnis.take(nl, conn_id, vni))

    async def _accept(
        self, conn_id: str, reply: Connection, call: Call, vni: int, nxt: Next, known: _Agreed | None
    ) -> Connection:
        mech = reply.mechanism
        try:
            if mech.type not in self.offer:
                raise invalid(f"mechanism {mech.type!r}, which was not offered")
            crossing = crosses_domains(reply)
            problem = refused_between_domains(mech.type) if crossing else None
            if problem:
                raise invalid(problem)
            params = parse_vxlan(mech.parameters, need_dst=True)
            tunnel = await self.kinds.tunnel(
                conn_id, mech.type, dict(mech.parameters), "dst", vni, params.mtu, crossing
            )
        except NsmError as exc:
            if known is None:
                self.kinds.vnis.release(vni, conn_id)
            await nxt.close(reply, call)
            raise NsmError(grpc.StatusCode.INTERNAL, f"the endpoint's agent answered: {exc.message}") from exc
        peer_key = mech.parameters.get("dst_public_key", "") if mech.type == WIREGUARD else ""
        self._agreed[conn_id] = _Agreed(mech.SerializeToString(), tunnel, peer_key)
        return reply
