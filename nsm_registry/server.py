"""The two registry gRPC services over a Store."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
import structlog
from google.protobuf.empty_pb2 import Empty

from nsm_api import registry_pb2_grpc
from nsm_api.registry_pb2 import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceEndpointResponse,
    NetworkServiceQuery,
    NetworkServiceResponse,
)
from nsm_common.grpcutil import Ctx
from nsm_common.identity.transport import LOCAL_ONLY, Transport
from nsm_common.matching import endpoint_matches, service_matches
from nsm_common.registry_path import PATH_KEY
from nsm_common.timeutil import now, ts_from, ts_seconds
from nsm_registry.guard import store_errors_unavailable
from nsm_registry.registrants import Admission, Refused, Registrants
from nsm_registry.store import EndpointEvent, ServiceEvent, Store, StoreUnavailable
from nsm_registry.validation import validate_endpoint, validate_service

log = structlog.get_logger("nsm.registry")
T = TypeVar("T")

# Who may register and unregister (over TLS; a plaintext caller came through the registry's
# own unix socket, or `--insecure` was asked for) and find.
REGISTRANTS = ("agent", "workload", "registry")


async def admitted(context: Ctx, admit: Callable[[], Admission]) -> Admission:
    """The caller's admission (Registrants.admit); its refusal becomes the call's status."""
    try:
        return admit()
    except Refused as exc:
        await context.abort(exc.code, exc.message)
        raise  # abort raises; this line is for the type checker


async def refusing(context: Ctx, write: Awaitable[T]) -> T:
    """A store write whose check may refuse it: the refusal becomes the call's status."""
    try:
        return await write
    except Refused as exc:
        log.info("registration refused", code=exc.code.name, error=exc.message)
        await context.abort(exc.code, exc.message)
        raise


async def send_path(context: Ctx, admission: Admission) -> None:
    """The path back to the caller in the `path` header, as upstream's registry sends it."""
    if admission.path_json:
        await context.send_initial_metadata(((PATH_KEY, admission.path_json),))


def _live(endpoint: NetworkServiceEndpoint, at: float) -> bool:
    return not endpoint.HasField("expiration_time") or ts_seconds(endpoint.expiration_time) > at


class ServiceRegistry(registry_pb2_grpc.NetworkServiceRegistryServicer):
    """The NetworkServiceRegistry service over a store."""

    def __init__(self, store: Store, transport: Transport = LOCAL_ONLY, registrants: Registrants | None = None) -> None:
        self.store = store
        self.transport = transport
        self.registrants = registrants or Registrants(transport)

    @store_errors_unavailable
    async def Register(self, request: NetworkService, context: Ctx) -> NetworkService:  # type: ignore[override]
        caller = await self.transport.authorize(context, REGISTRANTS, "Register")
        problem = validate_service(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        service = NetworkService()
        service.CopyFrom(request)
        if not service.payload:
            service.payload = "IP"
        admission = await admitted(context, lambda: self.registrants.admit(context, caller, "register", service.name))
        if admission.path_ids is not None:
            service.path_ids[:] = admission.path_ids
        stored = await refusing(context, self.store.put_service(service, admission.check))
        await send_path(context, admission)
        log.info("service registered", name=stored.name, payload=stored.payload)
        return stored

    @store_errors_unavailable
    async def Find(  # type: ignore[override]
        self, request: NetworkServiceQuery, context: Ctx
    ) -> AsyncIterator[NetworkServiceResponse]:
        await self.transport.authorize(context, REGISTRANTS, "Find")
        query = request.network_service
        stream = self.store.watch_services()
        try:
            async for item in stream:
                if isinstance(item, list):
                    for service in item:
                        if service_matches(query, service):
                            yield NetworkServiceResponse(network_service=service)
                    if not request.watch:
                        return
                elif isinstance(item, ServiceEvent) and service_matches(query, item.service):
                    yield NetworkServiceResponse(network_service=item.service, deleted=item.deleted)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    @store_errors_unavailable
    async def Unregister(self, request: NetworkService, context: Ctx) -> Empty:  # type: ignore[override]
        caller = await self.transport.authorize(context, REGISTRANTS, "Unregister")
        if not request.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "network service name is empty")
        admission = await admitted(context, lambda: self.registrants.admit(context, caller, "unregister", request.name))
        if await refusing(context, self.store.delete_service(request.name, admission.check)):
            log.info("service unregistered", name=request.name)
        await send_path(context, admission)
        return Empty()


class EndpointRegistry(registry_pb2_grpc.NetworkServiceEndpointRegistryServicer):
    """The NetworkServiceEndpointRegistry service over a store: expiry capped, names generated, watches."""

    def __init__(
        self,
        store: Store,
        max_expiration: float,
        transport: Transport = LOCAL_ONLY,
        registrants: Registrants | None = None,
    ) -> None:
        self.store = store
        self.max_expiration = max_expiration
        self.transport = transport
        self.registrants = registrants or Registrants(transport)

    @store_errors_unavailable
    async def Register(  # type: ignore[override]
        self, request: NetworkServiceEndpoint, context: Ctx
    ) -> NetworkServiceEndpoint:
        caller = await self.transport.authorize(context, REGISTRANTS, "Register")
        problem = validate_endpoint(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        endpoint = NetworkServiceEndpoint()
        endpoint.CopyFrom(request)
        if not endpoint.name:
            endpoint.name = f"nse-{uuid.uuid4()}"
        labels = {k: v.labels for k, v in endpoint.network_service_labels.items()}
        admission = await admitted(context, lambda: self.registrants.admit(
            context, caller, "register", endpoint.name, endpoint.network_service_names, labels))  # fmt: skip
        if admission.path_ids is not None:
            # The first is the name's owner; the last hop the registration came through serves
            # its URL (who dials it checks that the server proves this ID).
            endpoint.path_ids[:] = admission.path_ids
        at = now()
        limit = at + self.max_expiration
        asked = ts_seconds(endpoint.expiration_time) if endpoint.HasField("expiration_time") else 0.0
        endpoint.expiration_time.CopyFrom(ts_from(min(asked, limit) if asked > 0 else limit))
        endpoint.initial_registration_time.CopyFrom(ts_from(at))  # the store keeps an earlier one
        stored = await refusing(context, self.store.register_endpoint(endpoint, admission.check))
        await send_path(context, admission)
        log.info(
            "endpoint registered",
            name=stored.name,
            services=list(stored.network_service_names),
            url=stored.url,
            expires_in=round(ts_seconds(stored.expiration_time) - at, 1),
        )
        return stored

    @store_errors_unavailable
    async def Find(  # type: ignore[override]
        self, request: NetworkServiceEndpointQuery, context: Ctx
    ) -> AsyncIterator[NetworkServiceEndpointResponse]:
        await self.transport.authorize(context, REGISTRANTS, "Find")
        query = request.network_service_endpoint
        if query.name and not request.watch:
            # One record by name: no need to walk them all.
            found = await self.store.get_endpoint(query.name)
            if found is not None and _live(found, now()) and endpoint_matches(query, found):
                yield NetworkServiceEndpointResponse(network_service_endpoint=found)
            return
        stream = self.store.watch_endpoints()
        try:
            async for item in stream:
                if isinstance(item, list):
                    at = now()
                    for endpoint in item:
                        if _live(endpoint, at) and endpoint_matches(query, endpoint):
                            yield NetworkServiceEndpointResponse(network_service_endpoint=endpoint)
                    if not request.watch:
                        return
                elif isinstance(item, EndpointEvent) and endpoint_matches(query, item.endpoint):
                    if not item.deleted and not _live(item.endpoint, now()):
                        continue  # never serve a record past its expiration_time
                    yield NetworkServiceEndpointResponse(network_service_endpoint=item.endpoint, deleted=item.deleted)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    @store_errors_unavailable
    async def Unregister(self, request: NetworkServiceEndpoint, context: Ctx) -> Empty:  # type: ignore[override]
        caller = await self.transport.authorize(context, REGISTRANTS, "Unregister")
        if not request.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "network service endpoint name is empty")
        admission = await admitted(context, lambda: self.registrants.admit(context, caller, "unregister", request.name))
        if await refusing(context, self.store.delete_endpoint(request.name, admission.check)):
            log.info("endpoint unregistered", name=request.name)
        await send_path(context, admission)
        return Empty()


async def run_expiry(store: Store, poll: float = 0.25) -> None:
    """Remove endpoints that were not registered again before their expiration_time."""
    while True:
        at = now()
        nxt = None
        try:
            for endpoint in await store.expire_endpoints(at):
                log.info("endpoint expired", name=endpoint.name)
            nxt = await store.next_expiry()
        except StoreUnavailable as exc:
            log.warning("store unavailable; expiry waits", error=str(exc))
        delay = poll if nxt is None else min(poll, max(0.0, nxt - now()))
        await asyncio.sleep(delay)
