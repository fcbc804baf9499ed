"""The pod's side of a KERNEL connection: its namespace and interface name.

Resolves the namespace the client names (never creating one), chooses or checks
the interface name, and answers with the KERNEL mechanism the pod asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from nsm_agent.datapath import veth
from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.decisions.names import chosen_ifname, wire_alias
from nsm_agent.netns.resolve import NetnsRef, NetnsResolver
from nsm_agent.netns.spec import parse_netns
from nsm_agent.pipeline.call import AgentCall
from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Next, Step
from nsm_common.errors import invalid


@dataclass(frozen=True)
class _Side:
    ns: NetnsRef
    ifname: str


class ClientNetns(Step[AgentCall]):
    """Finds the client pod's namespace and picks its interface name; fills in the KERNEL
    mechanism of the reply.

    Reads: `call.client_mechanism`. Provides: `call.client_ns`, `call.client_ifname`.
    """

    def __init__(self, agent_name: str, resolver: NetnsResolver, netlink: NetlinkThread) -> None:
        self.agent_name = agent_name
        self.resolver = resolver
        self.netlink = netlink
        self._sides: dict[str, _Side] = {}

    async def request(self, request: NetworkServiceRequest, call: AgentCall, nxt: Next[AgentCall]) -> Connection:
        conn = request.connection
        if call.client_mechanism is None:
            return await nxt.request(request, call)  # the caller is another agent
        mech = Mechanism()
        mech.CopyFrom(call.client_mechanism)
        mech.cls = "LOCAL"
        ns = self.resolver.resolve(parse_netns(mech.parameters))
        ifname = mech.parameters.get("name") or chosen_ifname(conn.id, "nsm-")
        previous = self._sides.get(conn.id)
        ours = previous is not None and previous.ns.key == ns.key and previous.ifname == ifname
        try:
            alias = wire_alias(self.agent_name, conn.id)
            if not ours and await self.netlink.run(lambda nl: veth.ifname_in_use(nl, ns, ifname, alias)):
                where = mech.parameters.get("inodeURL") or ns.path
                raise invalid(f"interface name {ifname!r} is already used in network namespace {where}")
            call.client_ns = ns
            call.client_ifname = ifname
            reply = await nxt.request(request, call)
        except BaseException:
            await self.netlink.run(lambda nl: nl.trim())
            raise
        self._sides[conn.id] = _Side(ns, ifname)
        mech.parameters["name"] = ifname
        mech.parameters["netnsInode"] = str(ns.ino)
        reply.mechanism.CopyFrom(mech)
        return reply

    async def close(self, conn: Connection, call: AgentCall, nxt: Next[AgentCall]) -> None:
        self._sides.pop(conn.id, None)
        await nxt.close(conn, call)
