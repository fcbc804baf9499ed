"""What one peer may ask of a server at once, and how big a message may be.

gRPC's own limits bound one connection (`grpc.max_concurrent_streams`: further streams
wait) and one message (`grpc.max_receive_message_length`: RESOURCE_EXHAUSTED). A peer may
open many connections, so calls are also counted per peer (its SPIFFE ID over TLS, else
its address): past the limit a call is refused with RESOURCE_EXHAUSTED at once, before any
work, and the peer's other calls go on.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from nsm_common.identity.tls import peer_id

if TYPE_CHECKING:  # grpc-stubs makes it generic; grpcio's class is not subscriptable
    Handler = grpc.RpcMethodHandler[Any, Any]
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # a Request is a few KiB; a registry record too
MAX_METADATA_BYTES = 64 * 1024  # tokens and a registry `path` of up to 32 hops
MAX_STREAMS_PER_CONNECTION = 128
MAX_CALLS_PER_PEER = 256  # watches (Find, Monitor) are long calls and count too

LIMIT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_metadata_size", MAX_METADATA_BYTES),
    ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
]


def peer_key(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Who a call is from, for counting: the TLS peer's SPIFFE ID, else its address (all of a
    unix socket's callers share one: the socket is one local door)."""
    auth = context.auth_context()
    if auth.get("transport_security_type") == [b"ssl"]:
        found = peer_id(auth)
        if found is not None:
            return str(found)
    peer = context.peer() or "unknown"
    return peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer.split(":", 1)[0]


class PeerLimit(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """At most LIMIT calls in progress per peer; more are refused with RESOURCE_EXHAUSTED."""

    def __init__(self, limit: int = MAX_CALLS_PER_PEER) -> None:
        self.limit = limit
        self.active: collections.Counter[str] = collections.Counter()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return _counted(handler, self)


def _counted(handler: Handler, limit: PeerLimit) -> Handler:
    """The same handler, its behaviour wrapped in the per-peer count."""

    def admit(context: Any) -> Callable[[], None] | None:
        """Count the call in; its release (once, however the call ends), or None: refused."""
        key = peer_key(context)
        if limit.active[key] >= limit.limit:
            return None
        limit.active[key] += 1
        done = False

        def release(*_: object) -> None:
            nonlocal done
            if done:
                return
            done = True
            limit.active[key] -= 1
            if limit.active[key] <= 0:
                del limit.active[key]

        # A stream cancelled while waiting at `yield` ends its generator only when it is
        # collected: the call's end releases it at once.
        context.add_done_callback(release)
        return release

    def refusal(context: Any) -> Awaitable[None]:
        return context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,  # type: ignore[no-any-return]
                             f"too many calls at once from {peer_key(context)} (at most {limit.limit})")  # fmt: skip

    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            release = admit(context)
            if release is None:
                await refusal(context)
                return None
            try:
                return await inner_uu(request, context)
            finally:
                release()

        return grpc.unary_unary_rpc_method_handler(unary_unary, handler.request_deserializer,
                                                   handler.response_serializer)  # fmt: skip
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: Any) -> Any:
            release = admit(context)
            if release is None:
                await refusal(context)
                return
            try:
                async for item in inner_us(request, context):  # type: ignore[attr-defined]
                    yield item
            finally:
                release()

        return grpc.unary_stream_rpc_method_handler(unary_stream, handler.request_deserializer,
                                                    handler.response_serializer)  # fmt: skip
    return handler  # no streaming-request methods here
