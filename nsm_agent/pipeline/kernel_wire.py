"""Build the veth between the client's and the endpoint's namespaces.

Runs after the endpoint answered: checks the context it chose, then builds (or,
on a refresh, updates in place) the wire. If building fails, the endpoint's
connection is closed again so that nothing is left behind.
"""

from __future__ import annotations

import structlog

from nsm_agent.datapath import veth
from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.decisions.names import wire_alias
from nsm_agent.decisions.wireplan import ContextError, plan_ip_wire
from nsm_agent.pipeline.call import AgentCall
from nsm_agent.pipeline.wire_step import WireStep, bad_context, endpoint_netns
from nsm_api.connection_pb2 import Connection

log = structlog.get_logger("nsm.agent")


class KernelWire(WireStep[veth.VethWire]):
    """Both pods on this node: one veth pair between them.

    Reads: `call.client_ns`, `call.client_ifname`, `call.endpoint_remote` (then the tunnel
    step builds), `call.journalled`, `call.note`, and the endpoint's reply. Provides: the wire.
    """

    def applies(self, call: AgentCall) -> bool:
        return call.client_ns is not None and not call.endpoint_remote  # else the tunnel step builds

    def remove(self, nl: NetlinkThread, wire: veth.VethWire) -> None:
        veth.remove(nl, wire)

    async def build(self, conn_id: str, reply: Connection, call: AgentCall) -> veth.VethWire:
        assert call.client_ns is not None
        endpoint = reply.network_service_endpoint_name or "the endpoint"
        try:
            plan = plan_ip_wire(reply.context)
        except ContextError as exc:
            raise bad_context(endpoint, exc) from exc
        ep_ns, ep_ifname = endpoint_netns(self.resolver, reply, conn_id, endpoint)
        client_ns, client_ifname = call.client_ns, call.client_ifname
        old = self.wires.get(conn_id)
        alias = wire_alias(self.agent_name, conn_id)
        call.note("netns", client_ns.path, ep_ns.path)

        def apply(nl: NetlinkThread) -> veth.VethWire:
            if (
                old is not None
                and old.client_ns.key == client_ns.key
                and old.client_ifname == client_ifname
                and old.ep_ns.key == ep_ns.key
                and veth.alive(nl, old)
            ):
                return veth.update(nl, old, plan)
            if old is not None:
                veth.remove(nl, old)
            elif call.journalled:
                adopted = veth.adopt(nl, alias, client_ns, client_ifname, ep_ns, ep_ifname, plan)
                if adopted is not None:
                    return adopted  # built before this agent restarted
            return veth.build(nl, alias, client_ns, client_ifname, ep_ns, ep_ifname, plan)

        wire = await self.run(apply)
        eth = reply.context.ethernet_context
        eth.src_mac, eth.dst_mac = wire.client_mac, wire.ep_mac
        if old is None or wire.client_index != old.client_index:
            log.info(
                "wire up",
                id=conn_id,
                client=f"{client_ns.path}:{client_ifname}",
                endpoint=f"{ep_ns.path}:{ep_ifname}",
            )
        return wire
