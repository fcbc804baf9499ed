"""Endpoints that registered through this agent, and where they really listen.

The registry is told this agent's own URL for them (so every other agent knows
which node to ask); this map, kept in the state folder, says where the endpoint
itself is. It survives agent restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import structlog

from nsm_agent.registry.client import RegistryClient
from nsm_agent.registry.kept_services import KeptServices
from nsm_api.registry_pb2 import NetworkServiceEndpoint

log = structlog.get_logger("nsm.agent")


class LocalEndpoints:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "endpoints.json"
        self._urls: dict[str, str] = {}
        self.registered_since_start: set[str] = set()
        self._unregistering: dict[str, asyncio.Event] = {}
        try:
            self._urls = dict(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            self._urls = {}

    def get(self, name: str) -> str | None:
        return self._urls.get(name)

    @contextlib.contextmanager
    def unregistering(self, name: str) -> Iterator[None]:
        """While this agent unregisters `name` itself: a Register of it waits (`unregistered`)."""
        busy = self._unregistering[name] = asyncio.Event()
        try:
            yield
        finally:
            del self._unregistering[name]
            busy.set()

    async def unregistered(self, name: str) -> None:
        """Until an Unregister of `name` by this agent (of before a reboot) is over."""
        busy = self._unregistering.get(name)
        if busy is not None:
            await busy.wait()

    def names(self) -> list[str]:
        """Every endpoint that registered through this agent (and has not unregistered)."""
        return sorted(self._urls)

    def has_url(self, url: str) -> bool:
        """`url` is where an endpoint that registered through this agent listens."""
        return url in self._urls.values()

    def put(self, name: str, url: str) -> None:
        self.registered_since_start.add(name)
        if self._urls.get(name) != url:
            self._urls[name] = url
            self._save()

    def remove(self, name: str) -> None:
        if self._urls.pop(name, None) is not None:
            self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._urls, indent=1, sort_keys=True))
        os.replace(tmp, self.path)  # whole file or nothing, also on a crash


async def unregister_previous_boot(
    local: LocalEndpoints,
    registry: RegistryClient,
    kept: KeptServices | None = None,
    attempts: int = 30,
    every: float = 2.0,
) -> list[str]:
    """After a reboot: the endpoints that registered through this agent before it are gone
    with their processes. Unregister each that has not registered again since this start
    (the registry would send clients to it until its record expired), trying again while
    the registry is away (it often restarts with the node). Returns their names."""
    gone: list[str] = []
    left = [n for n in local.names() if n not in local.registered_since_start]
    for attempt in range(attempts):
        failed = []
        for name in left:
            if name in local.registered_since_start:
                continue  # it came back already
            try:
                with local.unregistering(name):
                    await registry.endpoints.Unregister(
                        NetworkServiceEndpoint(name=name), timeout=registry.timeout, metadata=registry.metadata()
                    )
            except grpc.aio.AioRpcError as exc:
                log.warning("cannot unregister an endpoint of before the reboot", name=name, error=exc.details())
                failed.append(name)
                continue
            local.remove(name)
            if kept is not None:
                kept.endpoint_unregistered(name)
            gone.append(name)
        left = failed
        if not left:
            break
        if attempt + 1 < attempts:
            await asyncio.sleep(every)
    if gone:
        log.info("unregistered the endpoints of before the reboot", endpoints=gone)
    return gone
