"""Build the veth between the client's and the endpoint's namespaces.

Runs after the endpoint answered: checks the context it chose, then builds (or,
on a refresh, updates in place) the wire. If building fails, the endpoint's
connection is closed again so that nothing is left behind.
"""

from __future__ import annotations

from typing import Protocol

import structlog

from nsm_agent.datapath import veth
from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.decisions.names import wire_alias
from nsm_agent.decisions.wireplan import ContextError, WirePlan, plan_ip_wire
from nsm_agent.netns.resolve import NetnsRef, NetnsResolver
from nsm_agent.pipeline.client_netns import ClientSide
from nsm_agent.pipeline.journal import journalled, note_wire
from nsm_agent.pipeline.link_watch import CLIENT, ENDPOINT, WireLinks
from nsm_agent.pipeline.select import Chosen
from nsm_agent.pipeline.wire_step import WireStep, bad_context, endpoint_netns
from nsm_api.connection_pb2 import Connection
from nsm_common.chain.chain import Call

log = structlog.get_logger("nsm.agent")


class VethOps(Protocol):
    """What KernelWire asks of the datapath (`nsm_agent.datapath.veth`; a fake in tests)."""

    def alive(self, nl: NetlinkThread, wire: veth.VethWire, /) -> bool: ...
    def update(self, nl: NetlinkThread, wire: veth.VethWire, plan: WirePlan, /) -> veth.VethWire: ...
    def remove(self, nl: NetlinkThread, wire: veth.VethWire, /) -> None: ...
    def adopt(
        self, nl: NetlinkThread, alias: str, c_ns: NetnsRef, c_if: str, e_ns: NetnsRef, e_if: str, plan: WirePlan, /
    ) -> veth.VethWire | None: ...
    def build(
        self, nl: NetlinkThread, alias: str, c_ns: NetnsRef, c_if: str, e_ns: NetnsRef, e_if: str, plan: WirePlan, /
    ) -> veth.VethWire: ...


class KernelWire(WireStep[veth.VethWire]):
    """Both pods on this node: one veth pair between them.

    Reads: `ClientSide`, `Chosen` (a remote endpoint: the tunnel step builds), `Journalled`, and
    the endpoint's reply. Provides: the wire, `WireLinks`, and the MACs in the reply.
    """

    def __init__(
        self, agent_name: str, resolver: NetnsResolver, netlink: NetlinkThread, datapath: VethOps = veth
    ) -> None:
        super().__init__(agent_name, resolver, netlink)
        self.datapath = datapath

    def applies(self, conn_id: str, call: Call) -> bool:
        chosen = call.get(Chosen)
        return call.get(ClientSide) is not None and not (chosen is not None and chosen.remote)

    def remove(self, nl: NetlinkThread, wire: veth.VethWire) -> None:
        self.datapath.remove(nl, wire)

    async def build(self, conn_id: str, reply: Connection, call: Call) -> veth.VethWire:
        client = call.get(ClientSide)
        assert client is not None
        endpoint = reply.network_service_endpoint_name or "the endpoint"
        try:
            plan = plan_ip_wire(reply.context)
        except ContextError as exc:
            raise bad_context(endpoint, exc) from exc
        ep_ns, ep_ifname = endpoint_netns(self.resolver, reply, conn_id, endpoint)
        client_ns, client_ifname = client.ns, client.ifname
        old = self.wires.get(conn_id)
        alias = wire_alias(self.agent_name, conn_id)
        note_wire(call, client_ns.path, ep_ns.path)

        restarted = journalled(call)
        ops = self.datapath
        adopted = False  # found as built before a restart: nothing new to report

        def apply(nl: NetlinkThread) -> veth.VethWire:
            nonlocal adopted
            if (
                old is not None
                and old.client_ns.key == client_ns.key
                and old.client_ifname == client_ifname
                and old.ep_ns.key == ep_ns.key
                and ops.alive(nl, old)
            ):
                return ops.update(nl, old, plan)
            if old is not None:
                ops.remove(nl, old)
            elif restarted:
                found = ops.adopt(nl, alias, client_ns, client_ifname, ep_ns, ep_ifname, plan)
                if found is not None:
                    adopted = True
                    return found  # built before this agent restarted
            return ops.build(nl, alias, client_ns, client_ifname, ep_ns, ep_ifname, plan)

        wire = await self.run(apply)
        call.put(WireLinks(((client_ns, wire.client_index, CLIENT), (ep_ns, wire.ep_index, ENDPOINT))))
        eth = reply.context.ethernet_context
        eth.src_mac, eth.dst_mac = wire.client_mac, wire.ep_mac
        if not adopted and (old is None or wire.client_index != old.client_index):
            log.info(
                "wire up",
                id=conn_id,
                client=f"{client_ns.path}:{client_ifname}",
                endpoint=f"{ep_ns.path}:{ep_ifname}",
            )
        return wire
