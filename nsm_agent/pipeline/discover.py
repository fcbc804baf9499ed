"""Find the requested service and its live endpoints in the registry."""

from __future__ import annotations

from dataclasses import dataclass, field

from nsm_agent.decisions.selection import candidates
from nsm_agent.pipeline.journal import journalled
from nsm_agent.registry.client import RegistryClient
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_api.registry_pb2 import NetworkService, NetworkServiceEndpoint
from nsm_common.chain.chain import Call, Next, Step
from nsm_common.errors import NsmError, not_found


@dataclass(frozen=True)
class Found:
    """What the registry says: the service, the endpoints that may serve this Request, or the
    one it names (None on a refresh while the registry cannot say)."""

    service: NetworkService | None = None
    candidates: list[NetworkServiceEndpoint] = field(default_factory=list)
    endpoint: NetworkServiceEndpoint | None = None


class Discover(Step):
    """Asks the registry (its watched copy first) for the service and the endpoints that match.

    Reads: `call.refresh`, `Journalled` (a refresh, or a connection carried on after a
    restart, needs only the endpoint it has). Provides: `Found`, and the reply's payload.
    """

    def __init__(self, registry: RegistryClient) -> None:
        self.registry = registry

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        conn = request.connection
        name = conn.network_service
        if (call.refresh or journalled(call)) and conn.network_service_endpoint_name:
            # A refresh needs no registry: the wire and the endpoint are known (also to the
            # journal after this agent restarted). While the registry is away (or refilling
            # after a restart) it goes on.
            try:
                found = await self.registry.find_endpoints(
                    NetworkServiceEndpoint(name=conn.network_service_endpoint_name), attempts=1
                )
                endpoint = found[0] if found else None
            except NsmError:
                endpoint = None
            call.put(Found(endpoint=endpoint))
            return await nxt.request(request, call)
        service = await self.registry.find_service(name)
        if service is None:
            raise not_found(f"network service {name!r} not found in the registry")
        conn.payload = service.payload or "IP"
        if conn.network_service_endpoint_name:
            found = await self.registry.find_endpoints(NetworkServiceEndpoint(name=conn.network_service_endpoint_name))
            if not found:
                raise not_found(
                    f"network service endpoint {conn.network_service_endpoint_name!r} not found in the registry"
                )
            call.put(Found(service, endpoint=found[0]))
            return await nxt.request(request, call)
        endpoints = await self.registry.find_endpoints(NetworkServiceEndpoint(network_service_names=[name]))
        if not endpoints:
            raise not_found(f"network service {name!r} has no endpoints")
        matching = candidates(service, endpoints, conn.labels)
        if not matching:
            labels = ", ".join(f"{k}={v}" for k, v in sorted(conn.labels.items())) or "no labels"
            raise not_found(f"no endpoint of network service {name!r} matches the request ({labels})")
        call.put(Found(service, matching))
        return await nxt.request(request, call)
