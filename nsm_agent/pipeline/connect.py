"""Forward the Request to the chosen endpoint at its registered URL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import grpc
import structlog
from google.protobuf.empty_pb2 import Empty

from nsm_agent.pipeline.endpoint_watch import EndpointWatch, PeerWatch
from nsm_agent.pipeline.journal import journalled, note
from nsm_agent.pipeline.remote_mechanism import DownstreamOffer
from nsm_agent.pipeline.select import Chosen
from nsm_agent.state.journal import DOWNSTREAM_ID
from nsm_api import networkservice_pb2_grpc
from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Call, Next, Step
from nsm_common.chain.path_tokens import OutgoingTokens
from nsm_common.errors import NsmError, from_rpc_error
from nsm_common.identity.spiffe_id import SpiffeId, SpiffeIdError
from nsm_common.identity.transport import LOCAL_ONLY, Transport, TransportError
from nsm_common.urls import UrlError, parse_address

log = structlog.get_logger("nsm.agent")


class EndpointStub(Protocol):
    """The two calls ConnectEndpoint makes of the next hop (a NetworkService stub)."""

    @property
    def Request(self) -> Callable[..., Awaitable[Connection]]: ...
    @property
    def Close(self) -> Callable[..., Awaitable[Empty]]: ...


# A Request that ended so may still be carried out by the far end.
MAY_HAVE_ACTED = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


def new_here(call: Call) -> bool:
    """This hop has never held the connection: not a refresh, not carried on after a restart."""
    return call.replay is None and not call.refresh and not journalled(call)


@dataclass
class _Downstream:
    url: str
    server_id: str
    # Serialized: a parsed message keeps an arena of its own (and a sub-message
    # of the reply would keep the whole reply).
    mechanism_wire: bytes

    @property
    def mechanism(self) -> Mechanism:
        return Mechanism.FromString(self.mechanism_wire)


def _next_hop_id(reply: Connection, conn: Connection) -> str:
    """The connection's id at the next hop: that hop's path segment's (each hop names the
    connection by its own segment; the reply comes back named by ours)."""
    segments = reply.path.path_segments
    index = conn.path.index + 1
    return segments[index].id if index < len(segments) and segments[index].id else conn.id


class ConnectEndpoint(Step):
    """Sends the Request on to the chosen endpoint (or its node's agent) and returns its answer;
    closes it there on Close.

    Reads: `Chosen` (where to), `DownstreamOffer` (KERNEL when empty), `call.reselecting` (a
    reselect's Close does not wait for a dead peer), `Journalled`. Provides: the endpoint's reply.
    """

    def __init__(
        self,
        timeout: float,
        watch: EndpointWatch | None = None,
        dial: Callable[[str], EndpointStub] | None = None,
        transport: Transport = LOCAL_ONLY,
        tokens: OutgoingTokens | None = None,
        peers: PeerWatch | None = None,
    ) -> None:
        self.timeout = timeout
        self.tokens = tokens or OutgoingTokens(None)
        self.watch = watch
        self.peers = peers
        self.dial = dial  # an endpoint by URL; by default a cached gRPC channel (a fake in tests)
        self.transport = transport
        # One per URL, the server's expected ID and our own identity (a renewed identity makes
        # new ones; the old stay for what runs on them); `_channels` has each URL's latest.
        self._by_key: dict[tuple[str, str, str], grpc.aio.Channel] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._downstream: dict[str, _Downstream] = {}
        self._closing: set[asyncio.Future[None]] = set()

    def _stub(self, url: str, server_id: str = "") -> EndpointStub:
        """A stub on the cached channel to URL (raises UrlError, TransportError, SpiffeIdError)."""
        if self.dial is not None:
            return self.dial(url)
        key = (url, server_id, self.transport.fingerprint())
        channel = self._by_key.get(key)
        if channel is None:
            expected = SpiffeId.parse(server_id) if server_id else None
            channel = self._by_key[key] = self.transport.aio_channel(parse_address(url), expected)
        self._channels[url] = channel
        return networkservice_pb2_grpc.NetworkServiceStub(channel)

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        conn = request.connection
        known = self._downstream.get(conn.id)
        chosen = call.get(Chosen)
        url = chosen.url if chosen is not None else ""
        name = conn.network_service_endpoint_name
        if not url:
            raise NsmError(grpc.StatusCode.UNAVAILABLE, f"endpoint {name!r} has no URL in the registry")
        server_id = chosen.server_id if chosen is not None else ""
        try:
            stub = self._stub(url, server_id)
        except UrlError as exc:
            raise NsmError(grpc.StatusCode.UNAVAILABLE, f"endpoint {name!r} has a bad URL: {exc}") from exc
        except (TransportError, SpiffeIdError) as exc:
            raise NsmError(grpc.StatusCode.UNAVAILABLE, f"endpoint {name!r} at {url}: {exc}") from exc
        down = Connection()
        down.CopyFrom(conn)
        down.ClearField("mechanism")
        if known is not None and known.url == url:
            down.mechanism.CopyFrom(known.mechanism)
        offer = call.get(DownstreamOffer)
        prefs = offer.mechanisms if offer is not None and offer.mechanisms else [Mechanism(cls="LOCAL", type="KERNEL")]
        metadata = self.tokens.sign_for(down, server_id)
        message = NetworkServiceRequest(connection=down, mechanism_preferences=prefs)
        note(call, "downstream", url)
        if server_id:
            note(call, DOWNSTREAM_ID, f"{url} {server_id}")
        try:
            try:
                reply: Connection = await stub.Request(message, timeout=self.timeout, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                # A cached channel to an endpoint that restarted waits out its
                # reconnect backoff; one fresh channel finds the new process now.
                await self._forget(url)
                reply = await self._stub(url, server_id).Request(message, timeout=self.timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in MAY_HAVE_ACTED and known is None and new_here(call):
                # The far end may still be at work on an answer we no longer wait for: a
                # Close (which waits there for that Request) frees what it builds. Before
                # the next candidate is tried, so that the two never overlap there.
                await asyncio.shield(self._spawn_close(url, server_id, down, quiet=True))
            raise from_rpc_error(exc, f"endpoint {name!r} at {url}") from exc
        try:
            self._check_reply(down, reply, server_id)
        except NsmError:
            if known is None and new_here(call):
                await asyncio.shield(self._spawn_close(url, server_id, reply, quiet=True))
            raise
        if known is not None and known.url != url:
            self._unwatch(known.url, conn.id)
        self._downstream[conn.id] = _Downstream(url, server_id, reply.mechanism.SerializeToString())
        if self.watch is not None and url in self._channels:
            self.watch.watch(url, conn.id, self._channels[url])
        if self.peers is not None and url in self._channels:
            self.peers.watch(url, conn.id, _next_hop_id(reply, conn), lambda: self._channels.get(url))
        return reply

    def _unwatch(self, url: str, conn_id: str) -> None:
        if self.watch is not None:
            self.watch.forget(url, conn_id)
        if self.peers is not None:
            self.peers.forget(url, conn_id)

    def _check_reply(self, sent: Connection, reply: Connection, server_id: str) -> None:
        """The next hop's tokens: over TLS checked (the `client` policies); from a local hop on
        a plaintext socket, signed by this hop on its behalf."""
        if server_id:
            self.tokens.check_reply(reply, server_id, sent)
        else:
            self.tokens.vouch(sent, reply)

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        known = self._downstream.pop(conn.id, None)
        if known is not None:
            self._unwatch(known.url, conn.id)
        if known is not None:
            down = Connection()
            down.CopyFrom(conn)
            down.mechanism.CopyFrom(known.mechanism)
            closing = self._spawn_close(known.url, known.server_id, down)
            if not call.reselecting:
                await asyncio.shield(closing)
        await nxt.close(conn, call)

    def _spawn_close(self, url: str, server_id: str, down: Connection, quiet: bool = False) -> asyncio.Future[None]:
        closing = asyncio.ensure_future(self._close_downstream(url, server_id, down, quiet))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        return closing

    async def settle(self) -> None:
        """Wait for the Closes still on their way to endpoints."""
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _close_downstream(self, url: str, server_id: str, down: Connection, quiet: bool = False) -> None:
        try:
            metadata = self.tokens.sign_for(down, server_id)
            await self._stub(url, server_id).Close(down, timeout=self.timeout, metadata=metadata)
        except (TransportError, SpiffeIdError) as exc:
            log.warning("endpoint close failed", id=down.id, url=url, error=str(exc))
        except grpc.aio.AioRpcError as exc:
            # The endpoint may be gone; its own expiry frees what it held.
            if not quiet:
                log.warning("endpoint close failed", id=down.id, url=url, error=exc.details())

    async def _forget(self, url: str) -> None:
        channel = self._channels.pop(url, None)
        for key in [k for k, c in self._by_key.items() if c is channel]:
            del self._by_key[key]
        if channel is not None:
            # Other Requests may be on it still: closing it now would cancel them (and a
            # cancelled replay reads like a connection closed meanwhile). They end first.
            self._closing.add(closing := asyncio.ensure_future(channel.close(grace=self.timeout)))
            closing.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        await self.settle()
        for channel in self._by_key.values():
            await channel.close(None)
