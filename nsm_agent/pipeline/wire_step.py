"""What every wire step shares: build after the answer, undo the answer if
building fails, remove on Close, turn datapath failures into statuses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import grpc
import structlog

from nsm_agent.datapath.links import WireError
from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.datapath.vxlan import VniTaken
from nsm_agent.decisions.names import chosen_ifname
from nsm_agent.decisions.wireplan import ContextError
from nsm_agent.netns.resolve import NetnsRef, NetnsResolver
from nsm_agent.netns.spec import parse_netns
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Call, Next, Step
from nsm_common.errors import NsmError, invalid
from nsm_common.names import ifname_problem

log = structlog.get_logger("nsm.agent")

W = TypeVar("W")


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
    """The endpoint answered with addresses or routes no wire can carry."""
    return NsmError(grpc.StatusCode.INTERNAL, f"endpoint {endpoint} replied with a bad context: {exc}")


class WireStep(Step, Generic[W]):
    """A step that builds a wire once the endpoint has answered (`applies`, `build`), closes
    the endpoint's connection again when building fails, and removes the wire on Close."""

    removed_message = "wire removed"

    def __init__(self, agent_name: str, resolver: NetnsResolver, netlink: NetlinkThread) -> None:
        self.agent_name = agent_name
        self.resolver = resolver
        self.netlink = netlink
        self.wires: dict[str, W] = {}

    def applies(self, conn_id: str, call: Call) -> bool:
        """Whether this step builds this Request's wire (asked once the endpoint answered)."""
        raise NotImplementedError

    async def build(self, conn_id: str, reply: Connection, call: Call) -> W:
        """Build (or on a refresh, update or adopt) the wire; may fill in the reply."""
        raise NotImplementedError

    def remove(self, nl: NetlinkThread, wire: W) -> None:
        raise NotImplementedError

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        conn_id = request.connection.id
        reply = await nxt.request(request, call)
        if not self.applies(conn_id, call):
            return reply
        try:
            self.wires[conn_id] = await self.build(conn_id, reply, call)
        except BaseException:
            await nxt.close(reply, call)  # nothing stays behind at the endpoint either
            raise
        return reply

    async def run(self, apply: Callable[[NetlinkThread], W]) -> W:
        """Run `apply` on the netlink thread; datapath failures become statuses."""
        try:
            return await self.netlink.run(apply)
        except VniTaken as exc:
            raise NsmError(grpc.StatusCode.UNAVAILABLE, str(exc)) from exc
        except WireError as exc:
            if exc.user_error:
                raise invalid(str(exc)) from exc
            raise NsmError(grpc.StatusCode.INTERNAL, str(exc)) from exc

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        wire = self.wires.pop(conn.id, None)
        try:
            if wire is not None:
                await self.netlink.run(lambda nl: self.remove(nl, wire))
                log.info(self.removed_message, id=conn.id)
        finally:
            await nxt.close(conn, call)
