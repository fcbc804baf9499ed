"""Both registry services on the agent's own socket, passed on to the registry.

Endpoints and clients on a node then need only their agent's address, as with
upstream's per-node manager.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.empty_pb2 import Empty

from nsm_agent.registry.client import RegistryClient
from nsm_agent.registry.kept_services import KeptServices
from nsm_agent.registry.local_endpoints import LocalEndpoints
from nsm_api import registry_pb2_grpc
from nsm_api.registry_pb2 import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceEndpointResponse,
    NetworkServiceQuery,
    NetworkServiceResponse,
)
from nsm_common.chain.caller import Caller
from nsm_common.grpcutil import Ctx
from nsm_common.policy.documents import caller_facts, registry_document
from nsm_common.policy.policies import Policies
from nsm_common.registry_path import PathError, RegistryPath, enter, read_path
from nsm_common.tokens import TokenError, subject


async def _relay_error(context: Ctx, exc: grpc.aio.AioRpcError, where: str) -> None:
    await context.abort(exc.code(), f"{where}: {exc.details()}")


async def forward_metadata(
    registry: RegistryClient, policies: Policies | None, context: Ctx, operation: str, name: str
) -> tuple[tuple[str, str | bytes], ...]:
    """What a registration passed on to the registry carries. From a local caller (a plaintext
    socket) this agent registers as itself; from a TLS caller the path goes on (the caller's
    token, checked here as the registry checks ours, then this agent's), so the caller owns
    the name."""
    caller = Caller.of(context)
    if caller.local or registry.transport.identity is None:
        return registry.metadata()
    metadata = context.invocation_metadata()
    try:
        if caller.token_error:
            raise TokenError(caller.token_error)
        path = read_path(metadata) or RegistryPath()
    except (TokenError, PathError) as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{operation} of {name!r}: {exc}")
        raise
    roles = registry.transport.roles
    relays = roles is not None and caller.spiffe_id is not None and roles.role_of(caller.spiffe_id) == "agent"
    if path.tokens and path.index > 0 and not relays:  # only agents pass others' registrations on
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"{operation} of {name!r}: {caller.spiffe_id} may register only in its own name "
                            "(its path holds others' segments)")  # fmt: skip
    presented = caller.presented.token if caller.presented is not None else ""
    index = enter(path, presented, "")
    out = registry.metadata(path)
    if policies is not None:
        doc = registry_document(
            operation=operation, resource_name=name, resource_id=subject(path.tokens[0]), owners=None,
            path_segments=path.segments(index), index=index, certificate=caller.certificate,
            caller=caller_facts(caller.spiffe_id, registry.transport.roles),
        )  # fmt: skip
        denial = policies.check("registry", doc)
        if denial is not None:
            hint = "" if presented else " (the caller sent no nsm-client-token)"
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{operation} of {name!r} by {caller.spiffe_id}: {denial.message}{hint}")  # fmt: skip
    return out


# Over TLS: endpoints (workloads) register through their node's agent; agents may ask too.
PROXY_CALLERS = ("agent", "workload")


class ServiceRegistryProxy(registry_pb2_grpc.NetworkServiceRegistryServicer):
    """Services registered through this agent are kept (`kept`), to be registered again should
    the registry lose them; unregistered, they are forgotten."""

    def __init__(
        self, registry: RegistryClient, kept: KeptServices | None = None, policies: Policies | None = None
    ) -> None:
        self.registry = registry
        self.kept = kept
        self.policies = policies
        self.where = f"registry at {registry.address}"

    async def Register(self, request: NetworkService, context: Ctx) -> NetworkService:  # type: ignore[override]
        await self.registry.transport.authorize(context, PROXY_CALLERS, "Register")
        metadata = await forward_metadata(self.registry, self.policies, context, "register", request.name)
        try:
            stored: NetworkService = await self.registry.services.Register(
                request, timeout=context.time_remaining(), metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            await _relay_error(context, exc, self.where)
            raise
        if self.kept is not None:
            self.kept.put(stored)
        return stored

    async def Find(  # type: ignore[override]
        self, request: NetworkServiceQuery, context: Ctx
    ) -> AsyncIterator[NetworkServiceResponse]:
        await self.registry.transport.authorize(context, PROXY_CALLERS, "Find")
        try:
            async for resp in self.registry.services.Find(request, timeout=context.time_remaining()):
                yield resp
        except grpc.aio.AioRpcError as exc:
            await _relay_error(context, exc, self.where)

    async def Unregister(self, request: NetworkService, context: Ctx) -> Empty:  # type: ignore[override]
        await self.registry.transport.authorize(context, PROXY_CALLERS, "Unregister")
        metadata = await forward_metadata(self.registry, self.policies, context, "unregister", request.name)
        try:
            done: Empty = await self.registry.services.Unregister(
                request, timeout=context.time_remaining(), metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            await _relay_error(context, exc, self.where)
            raise
        if self.kept is not None:
            self.kept.remove(request.name)
        return done


class EndpointRegistryProxy(registry_pb2_grpc.NetworkServiceEndpointRegistryServicer):
    """Registers local endpoints under this agent's public URL, remembering their own."""

    def __init__(
        self,
        registry: RegistryClient,
        local: LocalEndpoints,
        public_url: str,
        kept: KeptServices | None = None,
        policies: Policies | None = None,
    ) -> None:
        self.registry = registry
        self.local = local
        self.public_url = public_url
        self.kept = kept
        self.policies = policies
        self.where = f"registry at {registry.address}"

    async def Register(  # type: ignore[override]
        self, request: NetworkServiceEndpoint, context: Ctx
    ) -> NetworkServiceEndpoint:
        await self.registry.transport.authorize(context, PROXY_CALLERS, "Register")
        # An Unregister of this name left over from before a reboot goes first, not after.
        await self.local.unregistered(request.name)
        record = NetworkServiceEndpoint()
        record.CopyFrom(request)
        own_url = request.url
        if self.public_url and own_url and own_url != self.public_url:
            record.url = self.public_url
        metadata = await forward_metadata(self.registry, self.policies, context, "register", request.name)
        try:
            stored: NetworkServiceEndpoint = await self.registry.endpoints.Register(
                record, timeout=context.time_remaining(), metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            await _relay_error(context, exc, self.where)
            raise
        if self.kept is not None:
            self.kept.endpoint_registered(stored.name)
        if record.url != own_url:
            self.local.put(stored.name, own_url)
            stored.url = own_url  # the endpoint sees the address it gave
        return stored

    async def Find(  # type: ignore[override]
        self, request: NetworkServiceEndpointQuery, context: Ctx
    ) -> AsyncIterator[NetworkServiceEndpointResponse]:
        await self.registry.transport.authorize(context, PROXY_CALLERS, "Find")
        try:
            async for resp in self.registry.endpoints.Find(request, timeout=context.time_remaining()):
                yield resp
        except grpc.aio.AioRpcError as exc:
            await _relay_error(context, exc, self.where)

    async def Unregister(self, request: NetworkServiceEndpoint, context: Ctx) -> Empty:  # type: ignore[override]
        await self.registry.transport.authorize(context, PROXY_CALLERS, "Unregister")
        metadata = await forward_metadata(self.registry, self.policies, context, "unregister", request.name)
        try:
            done: Empty = await self.registry.endpoints.Unregister(
                request, timeout=context.time_remaining(), metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            await _relay_error(context, exc, self.where)
            raise
        self.local.remove(request.name)
        if self.kept is not None:
            self.kept.endpoint_unregistered(request.name)
        return done
