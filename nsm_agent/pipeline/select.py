"""Choose an endpoint: round robin over the candidates, the next one when one fails."""

from __future__ import annotations

import grpc
import structlog

from nsm_agent.decisions.selection import RoundRobin
from nsm_agent.pipeline.call import AgentCall
from nsm_agent.registry.local_endpoints import LocalEndpoints
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_api.registry_pb2 import NetworkServiceEndpoint
from nsm_common.chain.chain import Next, Step
from nsm_common.errors import NsmError

log = structlog.get_logger("nsm.agent")

# Failures of one endpoint that another endpoint may not have.
TRY_NEXT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.NOT_FOUND,
}


class Locator:
    """Where an endpoint is reached: on this node, or through the agent of its node."""

    def __init__(self, own_urls: set[str], local: LocalEndpoints) -> None:
        self.own_urls = own_urls
        self.local = local

    def locate(self, endpoint: NetworkServiceEndpoint, call: AgentCall) -> None:
        """Set where `endpoint` is reached: its own socket on this node, or the agent of its node."""
        if endpoint.url in self.own_urls:
            url = self.local.get(endpoint.name)
            if url is None:
                raise NsmError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"endpoint {endpoint.name!r} is registered at this agent's URL but never registered through it",
                )
            call.endpoint_url, call.endpoint_remote = url, False
        elif endpoint.url.startswith("unix://"):
            call.endpoint_url, call.endpoint_remote = endpoint.url, False  # registered straight, on this node
        else:
            call.endpoint_url, call.endpoint_remote = endpoint.url, True


class Select(Step[AgentCall]):
    """Round robin over the candidates, the next one when one fails (those in `call.avoid` last).

    Reads: `call.candidates`, `call.endpoint`, `call.avoid`. Provides: `call.endpoint`,
    `call.endpoint_url`, `call.endpoint_remote`, and the reply's endpoint name.
    """

    def __init__(self, locator: Locator) -> None:
        self.round_robin = RoundRobin()
        self.locator = locator

    async def request(self, request: NetworkServiceRequest, call: AgentCall, nxt: Next[AgentCall]) -> Connection:
        conn = request.connection
        if conn.network_service_endpoint_name:
            if call.endpoint is not None:
                self.locator.locate(call.endpoint, call)
            # Otherwise a refresh while the registry cannot say: the tunnel and
            # connect steps still know where this connection goes.
            return await nxt.request(request, call)
        failures: list[tuple[str, NsmError]] = []
        # What one attempt learns must not leak into the next (a remote
        # candidate's tunnel offer sent to a local one).
        arrived_with = call.tunnel
        ordered = self.round_robin.order(conn.network_service, call.candidates)
        ordered.sort(key=lambda ep: ep.name in call.avoid)  # stable: round robin order otherwise
        for endpoint in ordered:
            conn.network_service_endpoint_name = endpoint.name
            call.endpoint = endpoint
            call.tunnel, call.downstream_prefs = arrived_with, []
            try:
                self.locator.locate(endpoint, call)
                return await nxt.request(request, call)
            except NsmError as exc:
                if exc.code not in TRY_NEXT:
                    raise
                log.info("endpoint failed, trying the next", endpoint=endpoint.name, error=exc.message)
                failures.append((endpoint.name, exc))
        conn.network_service_endpoint_name = ""
        call.endpoint = None
        if not failures:
            raise NsmError(grpc.StatusCode.NOT_FOUND, f"network service {conn.network_service!r} has no endpoints")
        detail = "; ".join(f"{name}: {exc.message}" for name, exc in failures)
        raise NsmError(
            failures[-1][1].code,
            f"no endpoint of network service {conn.network_service!r} could serve the request ({detail})",
        )
