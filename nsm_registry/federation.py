"""This registry among others: calls for `NAME@DOMAIN` go to DOMAIN's registry.

A registry with a domain (`--domain`) answers `x@OWN` as `x`, and passes a call whose names
carry another domain on to that domain's registry, the suffix off every name on the way
there and back on every answer (upstream's proxy-dns does the same), so the far registry
holds plain names. Clients only ever speak to their own registry. Without a domain a
registry does no interdomain work: names with `@` are refused, not guessed at.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
import structlog

from nsm_api import registry_pb2_grpc
from nsm_common.identity.spiffe_id import SpiffeId
from nsm_common.identity.transport import Transport, TransportError
from nsm_common.interdomain import DomainNameError, domain_of
from nsm_common.registry_path import PATH_KEY, call_metadata, read_path
from nsm_common.urls import Address
from nsm_registry.domain_registries import DomainNotFound, DomainRegistries

log = structlog.get_logger("nsm.registry")

Metadata = tuple[tuple[str, str | bytes], ...]
# How long a registry found by DNS is kept before DNS is asked again.
RESOLVED_FOR = 30.0
# How long the handshakes with a far registry (one per trust domain it may be of) may take.
READY_WITHIN = 3.0


class FederationError(Exception):
    """A call that cannot go to another domain: a status and a message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Route:
    """Where a call whose names carry `@DOMAIN` goes: this registry's own store (`far` False:
    the suffix names this domain) or DOMAIN's registry."""

    domain: str
    far: bool


@dataclass
class FarRegistry:
    """Another domain's registry: where it is and the stubs of one channel to it."""

    domain: str
    address: Address
    server_id: SpiffeId | None
    channel: grpc.aio.Channel
    services: registry_pb2_grpc.NetworkServiceRegistryAsyncStub
    endpoints: registry_pb2_grpc.NetworkServiceEndpointRegistryAsyncStub

    @property
    def where(self) -> str:
        return f"registry of domain {self.domain} at {self.address}"

    def metadata(self, transport: Transport, path_json: str = "") -> Metadata:
        """This registry's token for the far one and, where it passes a registration on, the path."""
        if self.server_id is None:
            return ()
        path = read_path(((PATH_KEY, path_json),)) if path_json else None
        return call_metadata(transport.identity, str(self.server_id), path)

    def relayed(self, exc: grpc.aio.AioRpcError) -> FederationError:
        """The far registry's refusal, as this registry's answer, saying where it came from."""
        return FederationError(exc.code(), f"{self.where}: {exc.details()}")


class Federation:
    """Which domain a call is for, and a channel to that domain's registry (kept per address)."""

    def __init__(self, domain: str, registries: DomainRegistries, transport: Transport, floating: bool = False) -> None:
        self.domain = domain
        self.registries = registries
        self.transport = transport
        self.floating = floating
        self._resolved: dict[str, tuple[Address, float]] = {}
        # Per address and this registry's identity (a renewed one opens new channels).
        self._far: dict[tuple[Address, str], FarRegistry] = {}
        self._opening = asyncio.Lock()  # one handshake round per far registry, not one per call

    def route(self, names: Iterable[str]) -> Route | None:
        """Where a call with NAMES goes; None: no name carries `@`. Raises FederationError
        (INVALID_ARGUMENT) for names no registry here can answer."""
        try:
            domain = domain_of(names)
        except DomainNameError as exc:
            raise FederationError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if domain is None:
            return None
        if domain == self.domain:
            return Route(domain, far=False)
        if self.floating:
            raise FederationError(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"{domain}: a floating registry holds plain names and passes nothing on; "
                                  f"the registry of the caller's domain takes the @{self.domain} off")  # fmt: skip
        if not self.domain:
            raise FederationError(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"a name of domain {domain}: this registry has no domain of its own "
                                  "(--domain, env NSM_DOMAIN), so it does no interdomain work")  # fmt: skip
        return Route(domain, far=True)

    async def far(self, domain: str) -> FarRegistry:
        """DOMAIN's registry (found by the static map or DNS, cached); FederationError when none is known."""
        address = await self._address(domain)
        key = (address, self.transport.fingerprint())
        far = self._far.get(key)
        if far is not None:
            return far
        async with self._opening:
            far = self._far.get(key)
            if far is None:
                far = await self._connect(domain, address)
                self._far[key] = far
            return far

    async def _connect(self, domain: str, address: Address) -> FarRegistry:
        try:
            candidates: list[SpiffeId | None] = list(self.transport.registry_ids()) or [None]
            tried = [self._open(domain, address, server_id) for server_id in candidates]
        except TransportError as exc:
            raise FederationError(grpc.StatusCode.FAILED_PRECONDITION, f"domain {domain}: {exc}") from None
        # The far registry proves a registry's ID of this trust domain or of a federated one;
        # which, only its certificate says: with several, one channel per ID, all at once, and
        # the one whose handshake succeeds is kept.
        chosen = tried[0] if len(tried) == 1 else await _first_ready(tried)
        for other in tried:
            if other is not chosen:
                await other.channel.close(None)
        if chosen is not None:
            return chosen
        ids = ", ".join(str(i) for i in candidates)
        raise FederationError(grpc.StatusCode.UNAVAILABLE,
                              f"registry of domain {domain} at {address}: no TLS connection proving any of {ids} "
                              f"(away, or of a trust domain without a --trust-bundle here)")  # fmt: skip

    def _open(self, domain: str, address: Address, server_id: SpiffeId | None) -> FarRegistry:
        channel = self.transport.aio_channel(address, server_id)
        return FarRegistry(
            domain, address, server_id, channel,
            registry_pb2_grpc.NetworkServiceRegistryStub(channel),  # type: ignore[arg-type]
            registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel),  # type: ignore[arg-type]
        )  # fmt: skip

    async def _address(self, domain: str) -> Address:
        cached = self._resolved.get(domain)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        try:
            address = await self.registries.find(domain)
        except DomainNotFound as exc:
            raise FederationError(grpc.StatusCode.NOT_FOUND, str(exc)) from None
        if domain not in self.registries.static:
            log.info("domain registry found", domain=domain, url=str(address))
        self._resolved[domain] = (address, time.monotonic() + RESOLVED_FOR)
        return address

    async def close(self) -> None:
        for far in self._far.values():
            await far.channel.close(None)
        self._far.clear()


async def _first_ready(tried: list[FarRegistry], timeout: float = READY_WITHIN) -> FarRegistry | None:
    """The first of TRIED whose channel connects within TIMEOUT (None: none did)."""
    waits = {asyncio.ensure_future(far.channel.channel_ready()): far for far in tried}
    try:
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return waits[next(iter(done))] if done else None
    finally:
        for wait in waits:
            wait.cancel()
