"""The embedded in-memory store: the default for one machine."""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator
from typing import TypeVar

from nsm_api.registry_pb2 import NetworkService, NetworkServiceEndpoint
from nsm_common.timeutil import ts_seconds
from nsm_registry.hub import Hub, watch_hub
from nsm_registry.store import Check, EndpointEvent, ServiceEvent

T = TypeVar("T")


class MemoryStore:
    def __init__(self) -> None:
        self._services: dict[str, NetworkService] = {}
        self._endpoints: dict[str, NetworkServiceEndpoint] = {}
        self._expiry_heap: list[tuple[float, str]] = []
        self._service_hub = Hub()
        self._endpoint_hub = Hub()

    async def put_service(self, service: NetworkService, check: Check | None = None) -> NetworkService:
        if check is not None:
            check(self._services.get(service.name))
        stored = NetworkService()
        stored.CopyFrom(service)
        self._services[stored.name] = stored
        self._service_hub.publish(ServiceEvent(_copy(stored), deleted=False))
        return _copy(stored)

    async def delete_service(self, name: str, check: Check | None = None) -> bool:
        if check is not None:
            check(self._services.get(name))
        old = self._services.pop(name, None)
        if old is None:
            return False
        self._service_hub.publish(ServiceEvent(_copy(old), deleted=True))
        return True

    def _put_endpoint(self, endpoint: NetworkServiceEndpoint) -> NetworkServiceEndpoint:
        stored = NetworkServiceEndpoint()
        stored.CopyFrom(endpoint)
        self._endpoints[stored.name] = stored
        if stored.HasField("expiration_time"):
            heapq.heappush(self._expiry_heap, (ts_seconds(stored.expiration_time), stored.name))
        self._endpoint_hub.publish(EndpointEvent(_copy(stored), deleted=False))
        return _copy(stored)

    async def register_endpoint(
        self, endpoint: NetworkServiceEndpoint, check: Check | None = None
    ) -> NetworkServiceEndpoint:
        old = self._endpoints.get(endpoint.name)
        if check is not None:
            check(old)
        record = NetworkServiceEndpoint()
        record.CopyFrom(endpoint)
        if old is not None and old.HasField("initial_registration_time"):
            record.initial_registration_time.CopyFrom(old.initial_registration_time)
        return self._put_endpoint(record)

    async def get_endpoint(self, name: str) -> NetworkServiceEndpoint | None:
        found = self._endpoints.get(name)
        return _copy(found) if found is not None else None

    async def delete_endpoint(self, name: str, check: Check | None = None) -> bool:
        if check is not None:
            check(self._endpoints.get(name))
        old = self._endpoints.pop(name, None)
        if old is None:
            return False
        self._endpoint_hub.publish(EndpointEvent(_copy(old), deleted=True))
        return True

    async def watch_services(self) -> AsyncIterator[list[NetworkService] | ServiceEvent]:
        # Records are replaced, never changed in place: a snapshot may share them.
        async for item in watch_hub(self._service_hub, list(self._services.values())):
            yield item  # type: ignore[misc]

    async def watch_endpoints(self) -> AsyncIterator[list[NetworkServiceEndpoint] | EndpointEvent]:
        async for item in watch_hub(self._endpoint_hub, list(self._endpoints.values())):
            yield item  # type: ignore[misc]

    async def expire_endpoints(self, now: float) -> list[NetworkServiceEndpoint]:
        expired: list[NetworkServiceEndpoint] = []
        while self._expiry_heap and self._expiry_heap[0][0] <= now:
            _, name = heapq.heappop(self._expiry_heap)
            current = self._endpoints.get(name)
            # The heap keeps stale entries of re-registered endpoints; only the
            # live record's own expiration counts.
            if current is None or not current.HasField("expiration_time"):
                continue
            if ts_seconds(current.expiration_time) <= now:
                await self.delete_endpoint(name)
                expired.append(_copy(current))
        return expired

    async def next_expiry(self) -> float | None:
        return self._expiry_heap[0][0] if self._expiry_heap else None

    async def close(self) -> None:
        for hub in (self._service_hub, self._endpoint_hub):
            hub.publish(ConnectionAbortedError("registry store closed"))


def _copy(msg: T) -> T:
    out = type(msg)()  # type: ignore[call-arg]
    out.CopyFrom(msg)  # type: ignore[attr-defined]
    return out  # type: ignore[no-any-return]
