"""The agent's watched copy of the registry, so that a Request needs no registry round trip.

Two Find streams with `watch = true` (services, endpoints) keep it current. It is
only ever a shortcut: while a stream is down it is not used, and whatever it does
not hold (a service or endpoint registered a moment ago) is asked of the registry
itself. A stale entry costs one failed attempt at an endpoint, which selection
already survives.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import structlog

from nsm_api import registry_pb2_grpc
from nsm_api.registry_pb2 import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceQuery,
)
from nsm_common.matching import endpoint_matches
from nsm_common.timeutil import now, ts_seconds

log = structlog.get_logger("nsm.agent")
RETRY = 0.5


class RegistryCache:
    """Services and endpoints as two watching Find streams report them; `ready` flags say whether each is current."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._services_stub = registry_pb2_grpc.NetworkServiceRegistryStub(channel)
        self._endpoints_stub = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)
        self.services: dict[str, NetworkService] = {}
        self.endpoints: dict[str, NetworkServiceEndpoint] = {}
        self.services_ready = False
        self.endpoints_ready = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._follow_services()), asyncio.create_task(self._follow_endpoints())]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow_services(self) -> None:
        while True:
            try:
                fresh: dict[str, NetworkService] = {}
                self.services = fresh
                async for resp in self._services_stub.Find(
                    NetworkServiceQuery(network_service=NetworkService(), watch=True)
                ):
                    if resp.deleted:
                        fresh.pop(resp.network_service.name, None)
                    else:
                        fresh[resp.network_service.name] = resp.network_service
                    self.services_ready = True
            except grpc.aio.AioRpcError as exc:
                log.debug("registry service watch broke", error=exc.details())
            self.services_ready = False
            await asyncio.sleep(RETRY)

    async def _follow_endpoints(self) -> None:
        while True:
            try:
                fresh: dict[str, NetworkServiceEndpoint] = {}
                self.endpoints = fresh
                query = NetworkServiceEndpointQuery(network_service_endpoint=NetworkServiceEndpoint(), watch=True)
                async for resp in self._endpoints_stub.Find(query):
                    ep = resp.network_service_endpoint
                    if resp.deleted:
                        fresh.pop(ep.name, None)
                    else:
                        fresh[ep.name] = ep
                    self.endpoints_ready = True
            except grpc.aio.AioRpcError as exc:
                log.debug("registry endpoint watch broke", error=exc.details())
            self.endpoints_ready = False
            await asyncio.sleep(RETRY)

    def service(self, name: str) -> NetworkService | None:
        return self.services.get(name) if self.services_ready else None

    def find_endpoints(self, query: NetworkServiceEndpoint) -> list[NetworkServiceEndpoint]:
        """Live endpoints matching `query`; empty when not ready or nothing is held (then ask the registry)."""
        if not self.endpoints_ready:
            return []
        at = now()
        return [
            ep
            for ep in self.endpoints.values()
            if (not ep.HasField("expiration_time") or ts_seconds(ep.expiration_time) > at)
            and endpoint_matches(query, ep)
        ]
