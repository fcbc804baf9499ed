"""Build the veth between the client's and the endpoint's namespaces.

Runs after the endpoint answered: checks the context it chose, then builds (or,
on a refresh, updates in place) the wire. If building fails, the endpoint's
connection is closed again so that nothing is left behind.
"""

from __future__ import annotations

import grpc
import structlog

from nsm_agent.datapath import veth
from nsm_agent.datapath.links import WireError
from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.decisions.names import chosen_ifname, ifname_problem, wire_alias
from nsm_agent.decisions.wireplan import ContextError, plan_ip_wire
from nsm_agent.netns.resolve import NetnsRef, NetnsResolver
from nsm_agent.netns.spec import parse_netns
from nsm_agent.pipeline.chain import Call, Next, Step
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.errors import NsmError, invalid

log = structlog.get_logger("nsm.agent")


def endpoint_netns(resolver: NetnsResolver, reply: Connection, conn_id: str, endpoint: str) -> tuple[NetnsRef, str]:
    """The endpoint's namespace and interface name, from the KERNEL mechanism it answered with."""
    mech = reply.mechanism
    if mech.type != "KERNEL":
        raise NsmError(
            grpc.StatusCode.INTERNAL, f"endpoint {endpoint} answered with mechanism {mech.type!r}, not KERNEL"
        )
    try:
        ns = resolver.resolve(parse_netns(mech.parameters))
    except NsmError as exc:
        raise NsmError(exc.code, f"endpoint {endpoint}: {exc.message}") from exc
    ifname = mech.parameters.get("name") or chosen_ifname(conn_id, "nse-")
    problem = ifname_problem(ifname)
    if problem:
        raise NsmError(grpc.StatusCode.INTERNAL, f"endpoint {endpoint}: {problem}")
    return ns, ifname


def bad_context(endpoint: str, exc: ContextError) -> NsmError:
    return NsmError(grpc.StatusCode.INTERNAL, f"endpoint {endpoint} replied with a bad context: {exc}")


class KernelWire(Step):
    """Both pods on this node: one veth pair between them."""

    def __init__(self, agent_name: str, resolver: NetnsResolver, netlink: NetlinkThread) -> None:
        self.agent_name = agent_name
        self.resolver = resolver
        self.netlink = netlink
        self.wires: dict[str, veth.VethWire] = {}

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        conn_id = request.connection.id
        reply = await nxt.request(request, call)
        if call.client_ns is None or call.endpoint_remote:
            return reply  # one side is on another node: the tunnel step builds this side
        endpoint = reply.network_service_endpoint_name or "the endpoint"
        try:
            wire = await self._build(conn_id, reply, call, endpoint)
        except BaseException:
            await nxt.close(reply, call)
            raise
        self.wires[conn_id] = wire
        eth = reply.context.ethernet_context
        eth.src_mac, eth.dst_mac = wire.client_mac, wire.ep_mac
        return reply

    async def _build(self, conn_id: str, reply: Connection, call: Call, endpoint: str) -> veth.VethWire:
        assert call.client_ns is not None
        try:
            plan = plan_ip_wire(reply.context)
        except ContextError as exc:
            raise bad_context(endpoint, exc) from exc
        ep_ns, ep_ifname = endpoint_netns(self.resolver, reply, conn_id, endpoint)
        client_ns, client_ifname = call.client_ns, call.client_ifname
        old = self.wires.get(conn_id)
        alias = wire_alias(self.agent_name, conn_id)
        call.note("netns", client_ns.path)
        call.note("netns", ep_ns.path)

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
            else:
                adopted = veth.adopt(nl, alias, client_ns, client_ifname, ep_ns, ep_ifname, plan)
                if adopted is not None:
                    return adopted  # built before this agent restarted
            return veth.build(nl, alias, client_ns, client_ifname, ep_ns, ep_ifname, plan)

        try:
            wire = await self.netlink.run(apply)
        except WireError as exc:
            if exc.user_error:
                raise invalid(str(exc)) from exc
            raise NsmError(grpc.StatusCode.INTERNAL, str(exc)) from exc
        if old is None or wire.client_index != old.client_index:
            log.info(
                "wire up",
                id=conn_id,
                client=f"{client_ns.path}:{client_ifname}",
                endpoint=f"{ep_ns.path}:{ep_ifname}",
            )
        return wire

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        wire = self.wires.pop(conn.id, None)
        try:
            if wire is not None:
                await self.netlink.run(lambda nl: veth.remove(nl, wire))
                log.info("wire removed", id=conn.id)
        finally:
            await nxt.close(conn, call)
