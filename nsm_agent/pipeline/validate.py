"""Refuse malformed Requests before anything is looked up or built."""

from __future__ import annotations

from dataclasses import dataclass

from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Call, Next, Step
from nsm_common.errors import invalid, not_found
from nsm_common.names import ifname_problem

KERNEL = "KERNEL"


@dataclass(frozen=True)
class PodAsk:
    """A pod on this node asks for a KERNEL interface: its mechanism preference."""

    mechanism: Mechanism


@dataclass(frozen=True)
class PeerOffer:
    """Another agent asks, offering this REMOTE mechanism (a tunnel to its node)."""

    mechanism: Mechanism


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


class ValidateRequest(Step):
    """KERNEL from pods on this node; REMOTE mechanisms from other agents; anything else refused.

    Reads: the Request. Provides: `PodAsk` (a pod's KERNEL preference) or `PeerOffer`
    (another agent's REMOTE offer).
    """

    def __init__(self, remote: tuple[str, ...] = ()) -> None:
        self.supported = (KERNEL, *remote)
        self.remote = remote

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        conn = request.connection
        if not conn.network_service:
            raise not_found("network service '' not found: the request names no network service")
        mech = pick_kernel(request, self.supported)
        if mech.type in self.remote:
            if mech.cls and mech.cls != "REMOTE":
                raise invalid(f"mechanism {mech.type} must have cls REMOTE, not {mech.cls!r}")
            call.put(PeerOffer(mech))
            return await nxt.request(request, call)
        if mech.cls and mech.cls != "LOCAL":
            raise invalid(f"mechanism {mech.type} must have cls LOCAL, not {mech.cls!r}")
        name = mech.parameters.get("name", "")
        if name:
            problem = ifname_problem(name)
            if problem:
                raise invalid(problem)
        call.put(PodAsk(mech))
        return await nxt.request(request, call)
