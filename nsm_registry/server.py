"""The two registry gRPC services over a Store."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

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
from nsm_common.identity.spiffe_id import SpiffeId
from nsm_common.identity.transport import LOCAL_ONLY, Transport
from nsm_common.interdomain import endpoint_from, endpoint_to, service_from, service_to
from nsm_common.matching import endpoint_matches, service_matches
from nsm_common.registry_path import PATH_KEY
from nsm_common.timeutil import now, ts_from, ts_seconds
from nsm_registry.domain_registries import DomainRegistries
from nsm_registry.federation import FarRegistry, Federation, FederationError, Route
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


def no_federation(transport: Transport) -> Federation:
    """A registry without a domain: it refuses names of other domains."""
    return Federation("", DomainRegistries(), transport)


async def routed(context: Ctx, federation: Federation, names: list[str]) -> Route | None:
    """Where a call with NAMES goes (Federation.route); a refusal becomes the call's status."""
    try:
        return federation.route(names)
    except FederationError as exc:
        await context.abort(exc.code, exc.message)
        raise


async def far_registry(context: Ctx, federation: Federation, domain: str) -> FarRegistry:
    """DOMAIN's registry; when none is known, the call ends with why."""
    try:
        return await federation.far(domain)
    except FederationError as exc:
        await context.abort(exc.code, exc.message)
        raise


async def pass_on(
    context: Ctx,
    federation: Federation,
    domain: str,
    admission: Admission,
    method: Callable[[FarRegistry], Callable[..., Awaitable[T]]],
    message: object,
) -> tuple[FarRegistry, T]:
    """A registration or unregistration passed on to DOMAIN's registry (METHOD picks the stub's
    call), with this registry's token and the path; a refusal there becomes this call's,
    saying where it came from."""
    far = await far_registry(context, federation, domain)
    metadata = far.metadata(federation.transport, admission.path_json)
    try:
        return far, await method(far)(message, timeout=context.time_remaining(), metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        relayed = far.relayed(exc)
        log.info("another domain's registry refused", domain=far.domain, code=relayed.code.name, error=relayed.message)
        await context.abort(relayed.code, relayed.message)
        raise


async def far_answers(context: Ctx, far: FarRegistry, call: grpc.aio.UnaryStreamCall[Any, T]) -> AsyncIterator[T]:
    """A far Find's answers as they come; its error ends this call, saying where it came from;
    this call's end (a watch cancelled) ends the far one."""
    try:
        async for resp in call:
            yield resp
    except grpc.aio.AioRpcError as exc:
        relayed = far.relayed(exc)
        await context.abort(relayed.code, relayed.message)
    finally:
        call.cancel()


def _live(endpoint: NetworkServiceEndpoint, at: float) -> bool:
    return not endpoint.HasField("expiration_time") or ts_seconds(endpoint.expiration_time) > at


class ServiceRegistry(registry_pb2_grpc.NetworkServiceRegistryServicer):
    """The NetworkServiceRegistry service over a store."""

    def __init__(
        self,
        store: Store,
        transport: Transport = LOCAL_ONLY,
        registrants: Registrants | None = None,
        federation: Federation | None = None,
    ) -> None:
        self.store = store
        self.transport = transport
        self.registrants = registrants or Registrants(transport)
        self.federation = federation or no_federation(transport)

    @store_errors_unavailable
    async def Register(self, request: NetworkService, context: Ctx) -> NetworkService:  # type: ignore[override]
        caller = await self.transport.authorize(context, REGISTRANTS, "Register")
        problem = validate_service(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        route = await routed(context, self.federation, [request.name])
        admission = await admitted(context, lambda: self.registrants.admit(context, caller, "register", request.name))
        service = service_to(request, route.domain if route else "")  # a copy: the suffix off, if any
        if not service.payload:
            service.payload = "IP"
        if route is not None and route.far:
            _, stored = await pass_on(context, self.federation, route.domain, admission,
                                      lambda far: far.services.Register, service)  # fmt: skip
        else:
            if admission.path_ids is not None:
                service.path_ids[:] = admission.path_ids
            stored = await refusing(context, self.store.put_service(service, admission.check))
        await send_path(context, admission)
        if route is not None:
            stored = service_from(stored, route.domain)
        log.info("service registered", name=stored.name, payload=stored.payload)
        return stored

    @store_errors_unavailable
    async def Find(  # type: ignore[override]
        self, request: NetworkServiceQuery, context: Ctx
    ) -> AsyncIterator[NetworkServiceResponse]:
        await self.transport.authorize(context, REGISTRANTS, "Find")
        route = await routed(context, self.federation, [request.network_service.name])
        if route is None:
            async for resp in self._find(request.network_service, request.watch):
                yield resp
            return
        query = service_to(request.network_service, route.domain)
        if route.far:
            far = await far_registry(context, self.federation, route.domain)
            asked = NetworkServiceQuery(network_service=query, watch=request.watch)
            answers = far_answers(context, far, far.services.Find(asked, timeout=context.time_remaining()))
        else:
            answers = self._find(query, request.watch)
        async for resp in answers:
            yield NetworkServiceResponse(
                network_service=service_from(resp.network_service, route.domain), deleted=resp.deleted
            )

    async def _find(self, query: NetworkService, watch: bool) -> AsyncIterator[NetworkServiceResponse]:
        stream = self.store.watch_services()
        try:
            async for item in stream:
                if isinstance(item, list):
                    for service in item:
                        if service_matches(query, service):
                            yield NetworkServiceResponse(network_service=service)
                    if not watch:
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
        route = await routed(context, self.federation, [request.name])
        admission = await admitted(context, lambda: self.registrants.admit(context, caller, "unregister", request.name))
        name = service_to(request, route.domain).name if route else request.name
        if route is not None and route.far:
            await pass_on(context, self.federation, route.domain, admission,
                          lambda far: far.services.Unregister, NetworkService(name=name))  # fmt: skip
            log.info("service unregistered", name=request.name)
        elif await refusing(context, self.store.delete_service(name, admission.check)):
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
        federation: Federation | None = None,
    ) -> None:
        self.store = store
        self.max_expiration = max_expiration
        self.transport = transport
        self.registrants = registrants or Registrants(transport)
        self.federation = federation or no_federation(transport)

    @store_errors_unavailable
    async def Register(  # type: ignore[override]
        self, request: NetworkServiceEndpoint, context: Ctx
    ) -> NetworkServiceEndpoint:
        caller = await self.transport.authorize(context, REGISTRANTS, "Register")
        problem = validate_endpoint(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        route = await routed(context, self.federation, [request.name, *request.network_service_names])
        if route is not None and route.far:
            return await self._register_far(context, caller, request, route.domain)
        endpoint = endpoint_to(request, route.domain if route else "")  # a copy: the suffix off, if any
        if not endpoint.name:
            endpoint.name = f"nse-{uuid.uuid4()}"
        if self.federation.floating and not endpoint.url.startswith("tcp://"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"endpoint {endpoint.name!r}: a floating registry keeps only URLs other domains "
                                f"can reach (tcp://, the agent's --public-url), not {endpoint.url!r}")  # fmt: skip
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
        return endpoint_from(stored, route.domain) if route else stored

    async def _register_far(
        self, context: Ctx, caller: SpiffeId | None, request: NetworkServiceEndpoint, domain: str
    ) -> NetworkServiceEndpoint:
        """Registers into DOMAIN's registry, which names and caps the record (its expiry is the one
        the registrant renews by); the answer comes back with the suffix on its names."""
        if not request.url.startswith("tcp://"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"endpoint {request.name!r} registers {request.url!r} into domain {domain}, which "
                                "cannot reach it: register through an agent, with its --public-url")  # fmt: skip
        labels = {k: v.labels for k, v in request.network_service_labels.items()}
        admission = await admitted(context, lambda: self.registrants.admit(
            context, caller, "register", request.name, request.network_service_names, labels))  # fmt: skip
        far, stored = await pass_on(context, self.federation, domain, admission,
                                    lambda far: far.endpoints.Register, endpoint_to(request, domain))  # fmt: skip
        await send_path(context, admission)
        stored = endpoint_from(stored, domain)
        log.info("endpoint registered", name=stored.name, services=list(stored.network_service_names),
                 url=stored.url, into=far.where)  # fmt: skip
        return stored

    @store_errors_unavailable
    async def Find(  # type: ignore[override]
        self, request: NetworkServiceEndpointQuery, context: Ctx
    ) -> AsyncIterator[NetworkServiceEndpointResponse]:
        await self.transport.authorize(context, REGISTRANTS, "Find")
        asked = request.network_service_endpoint
        route = await routed(context, self.federation, [asked.name, *asked.network_service_names])
        if route is None:
            answers = self._find(asked, request.watch)
        elif route.far:
            query = NetworkServiceEndpointQuery(
                network_service_endpoint=endpoint_to(asked, route.domain), watch=request.watch
            )
            far = await far_registry(context, self.federation, route.domain)
            answers = far_answers(context, far, far.endpoints.Find(query, timeout=context.time_remaining()))
        else:
            answers = self._find(endpoint_to(asked, route.domain), request.watch)
        async for resp in answers:
            if route is not None:
                resp = NetworkServiceEndpointResponse(
                    network_service_endpoint=endpoint_from(resp.network_service_endpoint, route.domain),
                    deleted=resp.deleted,
                )
            yield resp

    async def _find(self, query: NetworkServiceEndpoint, watch: bool) -> AsyncIterator[NetworkServiceEndpointResponse]:
        if query.name and not watch:
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
                    if not watch:
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
        route = await routed(context, self.federation, [request.name])
        admission = await admitted(context, lambda: self.registrants.admit(context, caller, "unregister", request.name))
        record = endpoint_to(request, route.domain) if route else request
        if route is not None and route.far:
            far, _ = await pass_on(context, self.federation, route.domain, admission,
                                   lambda far: far.endpoints.Unregister, record)  # fmt: skip
            log.info("endpoint unregistered", name=request.name, into=far.where)
        elif await refusing(context, self.store.delete_endpoint(record.name, admission.check)):
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
