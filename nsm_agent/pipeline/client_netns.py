"""The pod's side of a KERNEL connection: its namespace and interface name.

Resolves the namespace the client names (never creating one), chooses or checks
the interface name, and answers with the KERNEL mechanism the pod asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nsm_agent.datapath import veth
from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.decisions.names import chosen_ifname, wire_alias
from nsm_agent.netns.resolve import NetnsRef, NetnsResolver
from nsm_agent.netns.spec import parse_netns
from nsm_agent.pipeline.validate import PodAsk
from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Call, Next, Step
from nsm_common.errors import invalid


@dataclass(frozen=True)
class ClientSide:
    """The client pod's namespace and the name its interface gets there."""

    ns: NetnsRef
    ifname: str


class ClientNetns(Step):
    """Finds the client pod's namespace and picks its interface name; fills in the KERNEL
    mechanism of the reply.

    Reads: `PodAsk`. Provides: `ClientSide`.
    """

    def __init__(
        self,
        agent_name: str,
        resolver: NetnsResolver,
        netlink: NetlinkThread,
        in_use: Callable[[NetlinkThread, NetnsRef, str, str], bool] = veth.ifname_in_use,
    ) -> None:
        self.agent_name = agent_name
        self.resolver = resolver
        self.netlink = netlink
        self.in_use = in_use  # someone else's interface has this name there (the datapath; a fake in tests)
        self._sides: dict[str, ClientSide] = {}

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        conn = request.connection
        ask = call.get(PodAsk)
        if ask is None:
            return await nxt.request(request, call)  # the caller is another agent
        mech = Mechanism()
        mech.CopyFrom(ask.mechanism)
        mech.cls = "LOCAL"
        ns = self.resolver.resolve(parse_netns(mech.parameters))
        ifname = mech.parameters.get("name") or chosen_ifname(conn.id, "nsm-")
        previous = self._sides.get(conn.id)
        ours = previous is not None and previous.ns.key == ns.key and previous.ifname == ifname
        try:
            alias = wire_alias(self.agent_name, conn.id)
            if not ours and await self.netlink.run(lambda nl: self.in_use(nl, ns, ifname, alias)):
                where = mech.parameters.get("inodeURL") or ns.path
                raise invalid(f"interface name {ifname!r} is already used in network namespace {where}")
            side = ClientSide(ns, ifname)
            call.put(side)
            reply = await nxt.request(request, call)
        except BaseException:
            await self.netlink.run(lambda nl: nl.trim())
            raise
        self._sides[conn.id] = side
        mech.parameters["name"] = ifname
        mech.parameters["netnsInode"] = str(ns.ino)
        reply.mechanism.CopyFrom(mech)
        return reply

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        self._sides.pop(conn.id, None)
        await nxt.close(conn, call)
