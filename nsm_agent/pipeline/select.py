"""Choose an endpoint: round robin over the candidates, the next one when one fails."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import structlog

from nsm_agent.decisions.selection import RoundRobin
from nsm_agent.pipeline.discover import Found
from nsm_agent.pipeline.journal import noted
from nsm_agent.registry.local_endpoints import LocalEndpoints
from nsm_agent.state.journal import DOWNSTREAM_ID, downstream_ids
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_api.registry_pb2 import NetworkServiceEndpoint
from nsm_common.chain.chain import Call, Next, Step
from nsm_common.errors import NsmError
from nsm_common.interdomain import SEPARATOR

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


@dataclass(frozen=True)
class Chosen:
    """The endpoint this attempt goes to, and where it is reached: its own socket on this node
    (`remote` False), or the agent of its node (`remote` True). `url` is empty when nobody can
    say (a refresh right after a restart, the registry away)."""

    endpoint: NetworkServiceEndpoint | None
    url: str
    remote: bool
    # The SPIFFE ID the server at a TCP `url` must prove: the last identity the endpoint's
    # registration came through (its node's agent, or the endpoint itself); empty: unknown.
    server_id: str = ""


def server_id_of(endpoint: NetworkServiceEndpoint) -> str:
    """Who serves an endpoint's URL: the last hop its registration came through (`path_ids`)."""
    return endpoint.path_ids[-1] if endpoint.path_ids else ""


class Locator:
    """Where an endpoint is reached: on this node, or through the agent of its node."""

    def __init__(self, own_urls: set[str], local: LocalEndpoints) -> None:
        self.own_urls = own_urls
        self.local = local

    def locate(self, endpoint: NetworkServiceEndpoint) -> Chosen:
        """Where `endpoint` is reached, from its registered URL."""
        if endpoint.url in self.own_urls:
            # A request from another domain names the endpoint `name@THAT-DOMAIN` (this
            # domain, to its registry); the endpoint registered here as `name`.
            url = self.local.get(endpoint.name) or self.local.get(endpoint.name.partition(SEPARATOR)[0])
            if url is None:
                raise NsmError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"endpoint {endpoint.name!r} is registered at this agent's URL but never registered through it",
                )
            return Chosen(endpoint, url, False)
        if endpoint.url.startswith("unix://"):
            return Chosen(endpoint, endpoint.url, False)  # registered straight, on this node
        return Chosen(endpoint, endpoint.url, True, server_id_of(endpoint))


def _from_journal(call: Call, local: LocalEndpoints) -> Chosen | None:
    """Where the connection went before this agent restarted (its journalled downstream URL):
    an endpoint on this node (its own socket, or a URL it registered through this agent),
    else another node's agent."""
    urls = noted(call, "downstream")
    if not urls:
        return None
    url = urls[-1]
    ids = downstream_ids(noted(call, DOWNSTREAM_ID))
    return Chosen(None, url, not (url.startswith("unix://") or local.has_url(url)), ids.get(url, ""))


class Select(Step):
    """Round robin over the candidates, the next one when one fails (those in `call.avoid` last).

    Reads: `Found`, `call.avoid`, `Journalled` (after a restart, where a connection went).
    Provides: `Chosen` for each attempt, and the reply's endpoint name. Remembers each
    connection's choice, so that a refresh while the registry cannot say still knows where
    its endpoint is.
    """

    def __init__(self, locator: Locator) -> None:
        self.round_robin = RoundRobin()
        self.locator = locator
        self._chosen: dict[str, Chosen] = {}

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        conn = request.connection
        found = call.get(Found) or Found()
        if conn.network_service_endpoint_name:
            if found.endpoint is not None:
                chosen = self.locator.locate(found.endpoint)
            else:  # a refresh while the registry cannot say: where it went last time
                chosen = self._chosen.get(conn.id) or _from_journal(call, self.locator.local) or Chosen(None, "", False)
            call.put(chosen)
            reply = await nxt.request(request, call)
            self._chosen[conn.id] = chosen
            return reply
        failures: list[tuple[str, NsmError]] = []
        ordered = self.round_robin.order(conn.network_service, found.candidates)
        ordered.sort(key=lambda ep: ep.name in call.avoid)  # stable: round robin order otherwise
        for endpoint in ordered:
            conn.network_service_endpoint_name = endpoint.name
            try:
                chosen = self.locator.locate(endpoint)
                call.put(chosen)
                reply = await nxt.request(request, call)
            except NsmError as exc:
                if exc.code not in TRY_NEXT:
                    raise
                log.info("endpoint failed, trying the next", endpoint=endpoint.name, error=exc.message)
                failures.append((endpoint.name, exc))
                continue
            self._chosen[conn.id] = chosen
            return reply
        conn.network_service_endpoint_name = ""
        if not failures:
            raise NsmError(grpc.StatusCode.NOT_FOUND, f"network service {conn.network_service!r} has no endpoints")
        detail = "; ".join(f"{name}: {exc.message}" for name, exc in failures)
        raise NsmError(
            failures[-1][1].code,
            f"no endpoint of network service {conn.network_service!r} could serve the request ({detail})",
        )

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        self._chosen.pop(conn.id, None)
        await nxt.close(conn, call)
