"""This node's end of a tunnel: a VXLAN device in the pod on this node.

On the client's node it goes into the client's pod with the client's side of
the context; on the endpoint's node, into the endpoint's pod with the endpoint's
side. Either way the device is created straight into the pod, while its UDP
socket stays in the node's namespace, where the underlay is.
"""

from __future__ import annotations

from typing import Protocol

import grpc
import structlog

from nsm_agent.datapath import vxlan
from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.decisions.names import wire_alias
from nsm_agent.decisions.wireplan import ContextError, SidePlan, plan_ip_wire
from nsm_agent.netns.resolve import NetnsRef, NetnsResolver
from nsm_agent.pipeline.client_netns import ClientSide
from nsm_agent.pipeline.journal import journalled, note_wire
from nsm_agent.pipeline.link_watch import CLIENT, ENDPOINT, WireLinks
from nsm_agent.pipeline.remote_mechanism import Tunnel, TunnelKinds, TunnelToClient
from nsm_agent.pipeline.select import Chosen
from nsm_agent.pipeline.wire_step import WireStep, bad_context, endpoint_netns
from nsm_api.connection_pb2 import Connection
from nsm_common.chain.chain import Call
from nsm_common.errors import NsmError

log = structlog.get_logger("nsm.agent")


class VxlanOps(Protocol):
    """What TunnelWire asks of the datapath (`nsm_agent.datapath.vxlan`; a fake in tests)."""

    def alive(self, nl: NetlinkThread, wire: vxlan.VxlanWire, /) -> bool: ...
    def update(self, nl: NetlinkThread, wire: vxlan.VxlanWire, side: SidePlan, mtu: int, /) -> vxlan.VxlanWire: ...
    def remove(self, nl: NetlinkThread, wire: vxlan.VxlanWire, /) -> None: ...
    def adopt(
        self, nl: NetlinkThread, alias: str, ns: NetnsRef, ifname: str, vni: int, side: SidePlan, mtu: int, /
    ) -> vxlan.VxlanWire | None: ...
    def build(
        self,
        nl: NetlinkThread,
        alias: str,
        ns: NetnsRef,
        ifname: str,
        vni: int,
        local: str,
        remote: str,
        port: int,
        side: SidePlan,
        mtu: int,
        mac: str = "",
        /,
    ) -> vxlan.VxlanWire: ...


class TunnelWire(WireStep[vxlan.VxlanWire]):
    """This node's end of an agreed tunnel: a VXLAN device into the pod on this node.

    Which end it builds is stated by who agreed the tunnel: on the client's node
    RemoteMechanismClient, below this step, agreed it with the endpoint's agent (read from its
    owner, `TunnelKinds`, once the answer is back): the device goes into the client's pod. On
    the endpoint's node RemoteMechanismServer, above, answered the client's agent
    (`TunnelToClient`): the device goes into the endpoint's pod, named by its answer.

    Reads: `TunnelKinds.agreed_toward_endpoint` (when `Chosen` is remote), `TunnelToClient`,
    `ClientSide`, `Journalled`,
    the reply. Provides: the wire, `WireLinks`, the tunnel in this hop's path segment's metrics,
    the MAC of its end in the reply.
    """

    removed_message = "tunnel removed"

    def __init__(
        self,
        agent_name: str,
        resolver: NetnsResolver,
        netlink: NetlinkThread,
        kinds: TunnelKinds,
        datapath: VxlanOps = vxlan,
    ) -> None:
        super().__init__(agent_name, resolver, netlink)
        self.kinds = kinds
        self.datapath = datapath

    def _tunnel_of(self, conn_id: str, call: Call) -> tuple[Tunnel, bool] | None:
        """The tunnel, and whether this is the client's end."""
        chosen = call.get(Chosen)
        toward_endpoint = self.kinds.agreed_toward_endpoint(conn_id)
        if toward_endpoint is not None and chosen is not None and chosen.remote:
            return toward_endpoint, True
        to_client = call.get(TunnelToClient)
        return (to_client.tunnel, False) if to_client is not None else None

    def applies(self, conn_id: str, call: Call) -> bool:
        return self._tunnel_of(conn_id, call) is not None

    def remove(self, nl: NetlinkThread, wire: vxlan.VxlanWire) -> None:
        self.datapath.remove(nl, wire)

    async def build(self, conn_id: str, reply: Connection, call: Call) -> vxlan.VxlanWire:
        agreed = self._tunnel_of(conn_id, call)
        assert agreed is not None
        tunnel, client_side = agreed
        endpoint = reply.network_service_endpoint_name or "the endpoint"
        mtu = min(m for m in (reply.context.MTU, tunnel.mtu) if m) if (reply.context.MTU or tunnel.mtu) else 0
        reply.context.MTU = mtu
        try:
            plan = plan_ip_wire(reply.context)
        except ContextError as exc:
            raise bad_context(endpoint, exc) from exc
        if client_side:
            client = call.get(ClientSide)
            if client is None:
                raise NsmError(grpc.StatusCode.INTERNAL, "a tunnel toward an endpoint for a caller that is no pod")
            ns, ifname, side = client.ns, client.ifname, plan.client
        else:
            ns, ifname = endpoint_netns(self.resolver, reply, conn_id, endpoint)
            side = plan.endpoint
        old = self.wires.get(conn_id)
        alias = wire_alias(self.agent_name, conn_id)
        note_wire(call, ns.path)

        restarted = journalled(call)
        ops = self.datapath
        adopted = False  # found as built before a restart: nothing new to report
        eth_known = reply.context.ethernet_context
        known_mac = eth_known.src_mac if client_side else eth_known.dst_mac

        def apply(nl: NetlinkThread) -> vxlan.VxlanWire:
            nonlocal adopted
            if old is not None and old.ns.key == ns.key and old.vni == tunnel.vni and ops.alive(nl, old):
                return ops.update(nl, old, side, mtu)
            if old is not None:
                ops.remove(nl, old)
            elif restarted:
                found = ops.adopt(nl, alias, ns, ifname, tunnel.vni, side, mtu)
                if found is not None:
                    adopted = True
                    return found  # built before this agent restarted
            # A rebuilt end keeps its MAC (from the wire, or after a restart from the journalled
            # reply): the far end's neighbour entry for it stays good, no ping is lost to ARP.
            mac = old.mac if old is not None else (known_mac if restarted else "")
            return ops.build(
                nl, alias, ns, ifname, tunnel.vni, tunnel.local_ip, tunnel.remote_ip, tunnel.port, side, mtu, mac
            )

        wire = await self.run(apply)
        call.put(WireLinks(((ns, wire.index, CLIENT if client_side else ENDPOINT),)))
        # Say on this hop's segment which tunnel carries the connection.
        own = reply.path.path_segments[reply.path.index] if reply.path.path_segments else None
        if own is not None:
            own.metrics.update({"tunnel": tunnel.type, "vni": str(tunnel.vni), "remote": tunnel.remote_ip})
        eth = reply.context.ethernet_context
        if client_side:
            eth.src_mac = wire.mac
        else:
            eth.dst_mac = wire.mac
        if not adopted and (old is None or old.index != wire.index):
            log.info(
                "tunnel up",
                id=conn_id,
                type=tunnel.type,
                vni=tunnel.vni,
                pod=f"{ns.path}:{ifname}",
                remote=tunnel.remote_ip,
                mtu=mtu,
            )
        return wire
