"""This node's end of a tunnel: a VXLAN device in the pod on this node.

On the client's node it goes into the client's pod with the client's side of
the context; on the endpoint's node, into the endpoint's pod with the endpoint's
side. Either way the device is created straight into the pod, while its UDP
socket stays in the node's namespace, where the underlay is.
"""

from __future__ import annotations

import structlog

from nsm_agent.datapath import vxlan
from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.decisions.names import wire_alias
from nsm_agent.decisions.wireplan import ContextError, plan_ip_wire
from nsm_agent.pipeline.call import AgentCall
from nsm_agent.pipeline.wire_step import WireStep, bad_context, endpoint_netns
from nsm_api.connection_pb2 import Connection

log = structlog.get_logger("nsm.agent")


class TunnelWire(WireStep[vxlan.VxlanWire]):
    """This node's end of an agreed tunnel: a VXLAN device into the pod on this node.

    Reads: `call.tunnel` (agreed below it, on the way out), `call.client_ns` (set: the client's
    side; unset: the endpoint's), `call.journalled`, `call.note`, the reply. Provides: the
    wire, and the tunnel noted in this hop's path segment's metrics.
    """

    removed_message = "tunnel removed"

    def applies(self, call: AgentCall) -> bool:
        return call.tunnel is not None

    def remove(self, nl: NetlinkThread, wire: vxlan.VxlanWire) -> None:
        vxlan.remove(nl, wire)

    async def build(self, conn_id: str, reply: Connection, call: AgentCall) -> vxlan.VxlanWire:
        tunnel = call.tunnel
        assert tunnel is not None
        endpoint = reply.network_service_endpoint_name or "the endpoint"
        mtu = min(m for m in (reply.context.MTU, tunnel.mtu) if m) if (reply.context.MTU or tunnel.mtu) else 0
        reply.context.MTU = mtu
        try:
            plan = plan_ip_wire(reply.context)
        except ContextError as exc:
            raise bad_context(endpoint, exc) from exc
        client_side = call.client_ns is not None
        if client_side:
            assert call.client_ns is not None
            ns, ifname, side = call.client_ns, call.client_ifname, plan.client
        else:
            ns, ifname = endpoint_netns(self.resolver, reply, conn_id, endpoint)
            side = plan.endpoint
        old = self.wires.get(conn_id)
        alias = wire_alias(self.agent_name, conn_id)
        call.note("netns", ns.path)

        def apply(nl: NetlinkThread) -> vxlan.VxlanWire:
            if old is not None and old.ns.key == ns.key and old.vni == tunnel.vni and vxlan.alive(nl, old):
                return vxlan.update(nl, old, side, mtu)
            if old is not None:
                vxlan.remove(nl, old)
            elif call.journalled:
                adopted = vxlan.adopt(nl, alias, ns, ifname, tunnel.vni, side, mtu)
                if adopted is not None:
                    return adopted  # built before this agent restarted
            return vxlan.build(
                nl, alias, ns, ifname, tunnel.vni, tunnel.local_ip, tunnel.remote_ip, tunnel.port, side, mtu
            )

        wire = await self.run(apply)
        # Say on this hop's segment which tunnel carries the connection.
        own = reply.path.path_segments[reply.path.index] if reply.path.path_segments else None
        if own is not None:
            own.metrics.update({"tunnel": tunnel.type, "vni": str(tunnel.vni), "remote": tunnel.remote_ip})
        eth = reply.context.ethernet_context
        if client_side:
            eth.src_mac = wire.mac
        else:
            eth.dst_mac = wire.mac
        if old is None or old.index != wire.index:
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
