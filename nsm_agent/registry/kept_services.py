"""Service records this agent registered for its endpoints, kept to register them again.

Upstream's endpoints register their NetworkService once, at start, and then renew only
their endpoint record. A registry that restarts without its records (the memory store)
would then never hear of the service again, and every new client would get NOT_FOUND.
The agent keeps each service record it proxied, exactly as registered (payload and
matches: rebuilding one from endpoint records would make an ETHERNET service IP), in
STATE_DIR/services.json, and registers it again when an endpoint registered through
this agent names it and the registry does not know it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path

import grpc
import structlog

from nsm_agent.registry.client import RegistryClient
from nsm_api.registry_pb2 import NetworkService
from nsm_common.errors import NsmError

log = structlog.get_logger("nsm.agent")

CHECK_EVERY = 0.5  # seconds; a check is a look at the watched copy, no round trip


class KeptServices:
    """The records by name, and the endpoints registered through this agent, in memory and in
    the state folder (whole file or nothing)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "services.json"
        self._records: dict[str, bytes] = {}
        self.endpoints: set[str] = set()
        try:
            raw = dict(json.loads(self.path.read_text()))
            self._records = {str(k): base64.b64decode(str(v)) for k, v in dict(raw["services"]).items()}
            self.endpoints = {str(e) for e in raw["endpoints"]}
        except (OSError, ValueError, KeyError, TypeError):
            self._records, self.endpoints = {}, set()

    def endpoint_registered(self, name: str) -> None:
        if name not in self.endpoints:
            self.endpoints.add(name)
            self._save()

    def endpoint_unregistered(self, name: str) -> None:
        if name in self.endpoints:
            self.endpoints.discard(name)
            self._save()

    def get(self, name: str) -> NetworkService | None:
        wire = self._records.get(name)
        return NetworkService.FromString(wire) if wire is not None else None

    def put(self, service: NetworkService) -> None:
        wire = service.SerializeToString()
        if self._records.get(service.name) != wire:
            self._records[service.name] = wire
            self._save()

    def remove(self, name: str) -> None:
        if self._records.pop(name, None) is not None:
            self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        services = {k: base64.b64encode(v).decode() for k, v in self._records.items()}
        tmp.write_text(json.dumps({"services": services, "endpoints": sorted(self.endpoints)}, indent=1))
        os.replace(tmp, self.path)


def wanted(kept: KeptServices, registry: RegistryClient) -> list[NetworkService]:
    """Kept services that an endpoint registered through this agent names now (from the watched
    copy of the endpoints) and that the watched copy of the services does not show."""
    cache = registry.cache
    if cache is None or not cache.endpoints_ready:
        return []
    known = cache.services if cache.services_ready else {}
    out: dict[str, NetworkService] = {}
    for endpoint_name in list(kept.endpoints):  # a few, where the registry may hold thousands
        endpoint = cache.endpoints.get(endpoint_name)
        if endpoint is None:
            continue  # not renewed (yet): nothing names its services
        for name in endpoint.network_service_names:
            record = kept.get(name)
            if record is not None and name not in known:
                out[name] = record
    return list(out.values())


async def keep_registered(kept: KeptServices, registry: RegistryClient) -> None:
    """Until cancelled: register again every kept service the registry lost. (An empty registry
    sends nothing on a watch, so the watched copy cannot say "none": the registry is asked.)"""
    while True:
        for service in wanted(kept, registry):
            try:
                if await registry.find_service(service.name) is not None:
                    continue
                await registry.services.Register(service, timeout=registry.timeout, metadata=registry.metadata())
                log.info("service registered again: the registry had lost it", service=service.name)
            except NsmError as exc:
                log.debug("the registry cannot say now", service=service.name, error=exc.message)
            except grpc.aio.AioRpcError as exc:
                log.warning("registering a kept service failed", service=service.name, error=exc.details())
        await asyncio.sleep(CHECK_EVERY)
