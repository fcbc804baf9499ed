"""Forward the Request to the chosen endpoint at its registered URL."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
import structlog

from nsm_agent.pipeline.call import AgentCall
from nsm_agent.pipeline.endpoint_watch import EndpointWatch
from nsm_api import networkservice_pb2_grpc
from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Next, Step
from nsm_common.errors import NsmError, from_rpc_error
from nsm_common.grpcutil import aio_channel
from nsm_common.urls import UrlError, parse_address

log = structlog.get_logger("nsm.agent")


@dataclass
class _Downstream:
    url: str
    # Serialized: a parsed message keeps an arena of its own (and a sub-message
    # of the reply would keep the whole reply).
    mechanism_wire: bytes

    @property
    def mechanism(self) -> Mechanism:
        return Mechanism.FromString(self.mechanism_wire)


class ConnectEndpoint(Step[AgentCall]):
    """Sends the Request on to the chosen endpoint (or its node's agent) and returns its answer;
    closes it there on Close.

    Reads: `call.endpoint_url`, `call.downstream_prefs` (KERNEL when empty),
    `call.reselecting` (a reselect's Close does not wait for a dead peer), `call.note`.
    Provides: the endpoint's reply.
    """

    def __init__(self, timeout: float, watch: EndpointWatch | None = None) -> None:
        self.timeout = timeout
        self.watch = watch
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._downstream: dict[str, _Downstream] = {}
        self._closing: set[asyncio.Future[None]] = set()

    def _stub(self, url: str) -> networkservice_pb2_grpc.NetworkServiceAsyncStub:
        channel = self._channels.get(url)
        if channel is None:
            channel = self._channels[url] = aio_channel(parse_address(url))
        return networkservice_pb2_grpc.NetworkServiceStub(channel)

    async def request(self, request: NetworkServiceRequest, call: AgentCall, nxt: Next[AgentCall]) -> Connection:
        conn = request.connection
        known = self._downstream.get(conn.id)
        url = call.endpoint_url or (known.url if known else "")
        name = conn.network_service_endpoint_name
        if not url:
            raise NsmError(grpc.StatusCode.UNAVAILABLE, f"endpoint {name!r} has no URL in the registry")
        try:
            stub = self._stub(url)
        except UrlError as exc:
            raise NsmError(grpc.StatusCode.UNAVAILABLE, f"endpoint {name!r} has a bad URL: {exc}") from exc
        down = Connection()
        down.CopyFrom(conn)
        down.ClearField("mechanism")
        if known is not None and known.url == url:
            down.mechanism.CopyFrom(known.mechanism)
        prefs = call.downstream_prefs or [Mechanism(cls="LOCAL", type="KERNEL")]
        message = NetworkServiceRequest(connection=down, mechanism_preferences=prefs)
        call.note("downstream", url)
        try:
            try:
                reply: Connection = await stub.Request(message, timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                # A cached channel to an endpoint that restarted waits out its
                # reconnect backoff; one fresh channel finds the new process now.
                await self._forget(url)
                reply = await self._stub(url).Request(message, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, f"endpoint {name!r} at {url}") from exc
        if known is not None and known.url != url and self.watch is not None:
            self.watch.forget(known.url, conn.id)
        self._downstream[conn.id] = _Downstream(url, reply.mechanism.SerializeToString())
        if self.watch is not None:
            self.watch.watch(url, conn.id, self._channels[url])
        return reply

    async def close(self, conn: Connection, call: AgentCall, nxt: Next[AgentCall]) -> None:
        known = self._downstream.pop(conn.id, None)
        if known is not None and self.watch is not None:
            self.watch.forget(known.url, conn.id)
        if known is not None:
            down = Connection()
            down.CopyFrom(conn)
            down.mechanism.CopyFrom(known.mechanism)
            closing = asyncio.ensure_future(self._close_downstream(known.url, down))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
            if not call.reselecting:
                await asyncio.shield(closing)
        await nxt.close(conn, call)

    async def _close_downstream(self, url: str, down: Connection) -> None:
        try:
            await self._stub(url).Close(down, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            # The endpoint may be gone; its own expiry frees what it held.
            log.warning("endpoint close failed", id=down.id, url=url, error=exc.details())

    async def _forget(self, url: str) -> None:
        channel = self._channels.pop(url, None)
        if channel is not None:
            await channel.close(None)

    async def aclose(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
