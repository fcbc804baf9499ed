"""Refuse malformed Requests before anything is looked up or built."""

from __future__ import annotations

from nsm_agent.pipeline.call import AgentCall
from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Next, Step
from nsm_common.errors import invalid, not_found
from nsm_common.names import ifname_problem

KERNEL = "KERNEL"


def pick_kernel(request: NetworkServiceRequest, supported: tuple[str, ...]) -> Mechanism:
    """The first supported mechanism preference, or the connection's current mechanism."""
    prefs = list(request.mechanism_preferences)
    if not prefs and request.connection.mechanism.type:
        prefs = [request.connection.mechanism]
    if not prefs:
        raise invalid("the request has no mechanism_preferences; a pod asks for KERNEL{name, inodeURL}")
    for pref in prefs:
        if pref.type in supported:
            return pref
    offered = ", ".join(repr(p.type) for p in prefs)
    raise invalid(f"mechanism type {offered} is not supported; this agent takes {', '.join(supported)}")


class ValidateRequest(Step[AgentCall]):
    """KERNEL from pods on this node; REMOTE mechanisms from other agents; anything else refused.

    Reads: the Request. Provides: `call.client_mechanism` (a pod's KERNEL preference) or
    `call.remote_offer` (another agent's REMOTE offer).
    """

    def __init__(self, remote: tuple[str, ...] = ()) -> None:
        self.supported = (KERNEL, *remote)
        self.remote = remote

    async def request(self, request: NetworkServiceRequest, call: AgentCall, nxt: Next[AgentCall]) -> Connection:
        conn = request.connection
        if not conn.network_service:
            raise not_found("network service '' not found: the request names no network service")
        mech = pick_kernel(request, self.supported)
        if mech.type in self.remote:
            if mech.cls and mech.cls != "REMOTE":
                raise invalid(f"mechanism {mech.type} must have cls REMOTE, not {mech.cls!r}")
            call.remote_offer = mech
            return await nxt.request(request, call)
        if mech.cls and mech.cls != "LOCAL":
            raise invalid(f"mechanism {mech.type} must have cls LOCAL, not {mech.cls!r}")
        name = mech.parameters.get("name", "")
        if name:
            problem = ifname_problem(name)
            if problem:
                raise invalid(problem)
        call.client_mechanism = mech
        return await nxt.request(request, call)
