"""The node's excluded prefixes on every Request, and no reply inside them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from nsm_agent.decisions.excluded_prefixes import IPNetwork, excluded_address, merged
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Call, Next, Step
from nsm_common.errors import NsmError


class NodeExclusions(Step):
    """Adds the node's excluded prefixes (the cluster's own ranges) to the Request, so that
    the endpoint, ours or anyone's, sees them; refuses a reply that hands out an address
    inside them (an endpoint that ignored them), before any wire is built for it.

    Reads: the node's prefixes now (PREFIXES). Provides: the Request's `excluded_prefixes`.
    """

    def __init__(self, prefixes: Callable[[], Sequence[IPNetwork]]) -> None:
        self.prefixes = prefixes

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        node = self.prefixes()
        if not node:
            return await nxt.request(request, call)
        ip = request.connection.context.ip_context
        wanted = merged(ip.excluded_prefixes, node)
        del ip.excluded_prefixes[:]
        ip.excluded_prefixes.extend(wanted)
        reply = await nxt.request(request, call)
        hit = excluded_address(reply.context.ip_context, node)
        if hit is not None:
            # A new connection is closed again by Begin, as after any failure; a refresh keeps
            # what it had.
            raise NsmError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"endpoint {reply.network_service_endpoint_name or '?'} handed out {hit[0]}, inside the node's "
                f"excluded prefix {hit[1]}",
            )
        return reply
