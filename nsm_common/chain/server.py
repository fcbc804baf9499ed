"""gRPC glue: NetworkService calls into a Request chain, errors into statuses."""

from __future__ import annotations

import asyncio

import grpc
import structlog
from google.protobuf.empty_pb2 import Empty

from nsm_api import networkservice_pb2_grpc
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.caller import Caller
from nsm_common.chain.chain import Call, Chain
from nsm_common.errors import NsmError
from nsm_common.grpcutil import Ctx
from nsm_common.identity.transport import AGENTS, Access

log = structlog.get_logger("nsm")


def _call_of(context: Ctx) -> Call:
    """A call that knows its caller (for the token and policy steps)."""
    call = Call()
    call.put(Caller.of(context))
    return call


class NetworkServiceServer(networkservice_pb2_grpc.NetworkServiceServicer):
    """The NetworkService gRPC service over a chain: every call runs to its end, errors become statuses."""

    def __init__(self, chain: Chain, access: Access = AGENTS) -> None:
        self.chain = chain
        self.access = access  # by default over TLS agents only: this hop serves remote Requests to them
        self._inflight: set[asyncio.Task[object]] = set()

    async def _run(self, coro, context: Ctx, what: str):  # type: ignore[no-untyped-def]
        # A caller that goes away mid-Request must not cut a step in half
        # (an endpoint lease taken, the wire not yet built): the chain always
        # finishes, and what it built is closed by expiry if nobody refreshes.
        task = asyncio.ensure_future(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        try:
            return await asyncio.shield(task)
        except NsmError as exc:
            log.info(f"{what} refused", code=exc.code.name, error=exc.message)
            await context.abort(exc.code, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception(f"{what} failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"{what} failed: {exc}")

    async def Request(  # type: ignore[override]
        self, request: NetworkServiceRequest, context: Ctx
    ) -> Connection:
        await self.access.check(context, "Request")
        req = NetworkServiceRequest()
        req.CopyFrom(request)
        return await self._run(self.chain.request(req, _call_of(context)), context, "request")  # type: ignore[no-any-return]

    async def Close(self, request: Connection, context: Ctx) -> Empty:  # type: ignore[override]
        await self.access.check(context, "Close")
        conn = Connection()
        conn.CopyFrom(request)
        await self._run(self.chain.close(conn, _call_of(context)), context, "close")
        return Empty()

    async def drain(self) -> None:
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
