"""The store interface the registry server talks to, and the one failure it may raise.

The memory store (one process) and the etcd store (several replicas sharing one
state) implement it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from nsm_api.registry_pb2 import NetworkService, NetworkServiceEndpoint


class StoreUnavailable(RuntimeError):
    """The store cannot answer now (etcd away); the registry says UNAVAILABLE."""


# Called with the stored record (None: there is none) just before a write or delete, in the
# same atomic step (etcd: a transaction on the record's revision); raises to refuse it. So
# who owns a name is decided on the record as it is, on every replica, after any restart.
Check = Callable[[Any], None]


@dataclass(frozen=True)
class ServiceEvent:
    service: NetworkService
    deleted: bool


@dataclass(frozen=True)
class EndpointEvent:
    endpoint: NetworkServiceEndpoint
    deleted: bool


class Store(Protocol):
    """Records and change events. Every record returned is a copy the caller may keep."""

    async def put_service(self, service: NetworkService, check: Check | None = None) -> NetworkService: ...
    async def delete_service(self, name: str, check: Check | None = None) -> bool: ...

    async def register_endpoint(
        self, endpoint: NetworkServiceEndpoint, check: Check | None = None
    ) -> NetworkServiceEndpoint:
        """Insert or replace atomically; an existing record's initial_registration_time is kept."""
        ...

    async def get_endpoint(self, name: str) -> NetworkServiceEndpoint | None: ...
    async def delete_endpoint(self, name: str, check: Check | None = None) -> bool: ...

    def watch_services(self) -> AsyncIterator[list[NetworkService] | ServiceEvent]:
        """First yields the current records as one list, then every later change, with no gap."""
        ...

    def watch_endpoints(self) -> AsyncIterator[list[NetworkServiceEndpoint] | EndpointEvent]:
        """First yields the current records as one list, then every later change, with no gap."""
        ...

    async def expire_endpoints(self, now: float) -> list[NetworkServiceEndpoint]:
        """Remove endpoints whose expiration_time has passed; return them (each once)."""
        ...

    async def next_expiry(self) -> float | None:
        """The earliest expiration_time among stored endpoints."""
        ...

    async def close(self) -> None: ...
