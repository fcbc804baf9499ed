"""Questions the agent asks the registry, with retries while it is unreachable."""

from __future__ import annotations

import asyncio

import grpc

from nsm_agent.registry.cache import RegistryCache
from nsm_api import registry_pb2_grpc
from nsm_api.registry_pb2 import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceQuery,
)
from nsm_common.errors import NsmError
from nsm_common.identity.transport import LOCAL_ONLY, Transport
from nsm_common.registry_path import RegistryPath, call_metadata
from nsm_common.urls import Address

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class RegistryClient:
    """The agent's one channel to the registry, answering from the watched copy where it can."""

    def __init__(
        self, address: Address, timeout: float = 3.0, attempts: int = 3, transport: Transport = LOCAL_ONLY
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.attempts = attempts
        self.transport = transport
        self._old: list[grpc.aio.Channel] = []
        self._open()
        self.cache: RegistryCache | None = None

    def _open(self) -> None:
        # The registry proves the registry's ID over TCP (raises TransportError when it cannot).
        self._fingerprint = self.transport.fingerprint()
        self.channel = self.transport.aio_channel(self.address, self.transport.registry_id())
        self._services: registry_pb2_grpc.NetworkServiceRegistryAsyncStub = (
            registry_pb2_grpc.NetworkServiceRegistryStub(self.channel)  # type: ignore[assignment]
        )
        self._endpoints: registry_pb2_grpc.NetworkServiceEndpointRegistryAsyncStub = (
            registry_pb2_grpc.NetworkServiceEndpointRegistryStub(self.channel)  # type: ignore[assignment]
        )

    def _current(self) -> None:
        """A new channel once this agent's identity changed; the old one stays for the watch on it."""
        if self.transport.fingerprint() != self._fingerprint:
            self._old.append(self.channel)
            self._open()

    @property
    def services(self) -> registry_pb2_grpc.NetworkServiceRegistryAsyncStub:
        self._current()
        return self._services

    @property
    def endpoints(self) -> registry_pb2_grpc.NetworkServiceEndpointRegistryAsyncStub:
        self._current()
        return self._endpoints

    def metadata(self, path: RegistryPath | None = None) -> tuple[tuple[str, str | bytes], ...]:
        """What a registration sends over TLS: this agent's token for the registry and, when it
        passes a caller's registration on, the path so far (upstream's `path` metadata)."""
        registry_id = self.transport.registry_id() if self.address.scheme == "tcp" else None
        if registry_id is None:
            return ()
        return call_metadata(self.transport.identity, str(registry_id), path)

    def watch(self) -> None:
        """Keep a watched copy of the registry and answer from it when it can."""
        self.cache = RegistryCache(self.channel)
        self.cache.start()

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.aclose()
        for channel in [self.channel, *self._old]:
            await channel.close(None)

    async def _retry(self, what: str, fn, attempts: int | None = None):  # type: ignore[no-untyped-def]
        delay = 0.1
        attempts = attempts or self.attempts
        for attempt in range(1, attempts + 1):
            try:
                return await fn()
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or attempt == attempts:
                    raise NsmError(
                        exc.code(), f"registry at {self.address} {what}: {exc.details()} (after {attempt} attempts)"
                    ) from exc
            await asyncio.sleep(delay)
            delay *= 3
        raise AssertionError("unreachable")

    async def find_service(self, name: str) -> NetworkService | None:
        """The service named `name`, or None; from the watched copy when it has it."""
        cached = self.cache.service(name) if self.cache is not None else None
        if cached is not None:
            return cached

        async def call() -> NetworkService | None:
            query = NetworkServiceQuery(network_service=NetworkService(name=name))
            async for resp in self.services.Find(query, timeout=self.timeout):
                if resp.network_service.name == name and not resp.deleted:
                    return resp.network_service
            return None

        return await self._retry("could not find services", call)  # type: ignore[no-any-return]

    async def find_endpoints(
        self, query: NetworkServiceEndpoint, attempts: int | None = None
    ) -> list[NetworkServiceEndpoint]:
        """The endpoints matching `query`: from the watched copy when it holds any, else asked of the registry."""
        cached = self.cache.find_endpoints(query) if self.cache is not None else []
        if cached:
            return cached

        async def call() -> list[NetworkServiceEndpoint]:
            out = []
            async for resp in self.endpoints.Find(
                NetworkServiceEndpointQuery(network_service_endpoint=query), timeout=self.timeout
            ):
                if not resp.deleted:
                    out.append(resp.network_service_endpoint)
            return out

        return await self._retry("could not find endpoints", call, attempts)  # type: ignore[no-any-return]
