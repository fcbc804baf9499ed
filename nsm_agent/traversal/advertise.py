"""Relays found through the registry: an agent with `--relay` keeps a record of itself
there, and every agent of its domain reads the relays from its watched copy.

The record is an endpoint of the reserved service `RELAY_SERVICE`, named after the agent,
at its URL; its labels give the relay's UDP address and its WireGuard key, which
authenticates the relay's answers. It is renewed well inside its expiry, so a relay that
dies leaves the registry within EXPIRES seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from nsm_agent.decisions.traversal import RelayRef, parse_relay
from nsm_agent.registry.client import RegistryClient
from nsm_api.registry_pb2 import NetworkServiceEndpoint, NetworkServiceLabels
from nsm_common.errors import NsmError
from nsm_common.identity.spiffe_id import Roles, SpiffeId

log = structlog.get_logger("nsm.agent")

RELAY_SERVICE = "nsm-relay"
EXPIRES = 60.0
RENEW_EVERY = 15.0


def relay_record(agent: str, url: str, relay: RelayRef, expires_in: float = EXPIRES) -> NetworkServiceEndpoint:
    expiry = Timestamp()
    expiry.GetCurrentTime()
    expiry.FromNanoseconds(expiry.ToNanoseconds() + int(expires_in * 1e9))
    return NetworkServiceEndpoint(
        name=f"{agent}-relay",
        network_service_names=[RELAY_SERVICE],
        network_service_labels={RELAY_SERVICE: NetworkServiceLabels(labels={"address": str(relay), "key": relay.key})},
        url=url,
        expiration_time=expiry,
    )


Trusted = Callable[[NetworkServiceEndpoint], bool]


def registered_by_agent(roles: Callable[[], Roles | None]) -> Trusted:
    """Whether a record's owner (the first of its `path_ids`, which the registry fills from the
    registrant's identity) is an agent. A workload may register endpoints: one that registered
    a relay would choose the mapping every node offers, and so where every tunnel goes. Without
    identities (`--insecure`, no owners kept) every record is taken, as every caller is."""

    def trusted(record: NetworkServiceEndpoint) -> bool:
        known = roles()
        if known is None:
            return True
        try:
            owner = SpiffeId.parse(record.path_ids[0]) if record.path_ids else None
        except ValueError:
            return False
        return owner is not None and known.role_of(owner) == "agent"

    return trusted


def relays_of(records: list[NetworkServiceEndpoint], trusted: Trusted = lambda _: True) -> list[RelayRef]:
    """The relays these records name, sorted by name (so every agent of a domain offers the same first);
    a record with bad labels (an address or a key that is none) is skipped: offered to peers, it
    would make them refuse every Request from this domain. So is one TRUSTED refuses."""
    out = []
    for record in sorted(records, key=lambda r: r.name):
        labels = record.network_service_labels.get(RELAY_SERVICE)
        if labels is None:
            continue
        if not trusted(record):
            log.warning("relay record ignored: not registered by an agent", name=record.name,
                        owner=record.path_ids[0] if record.path_ids else "none")  # fmt: skip
            continue
        try:
            relay = parse_relay(
                {"x_relay": labels.labels.get("address", ""), "x_relay_key": labels.labels.get("key", "")}, "x"
            )
        except NsmError:
            continue
        if relay is not None:
            out.append(relay)
    return out


class RelayFinder:
    """The domain's relays: from the watched copy of the registry, which costs no round trip
    and sees a relay within moments of its registering; asked of the registry (kept ASK_EVERY
    seconds) only while that copy is not there."""

    ASK_EVERY = 15.0

    def __init__(
        self, registry: RegistryClient, trusted: Trusted = lambda _: True, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = registry
        self._trusted = trusted
        self._clock = clock
        self._asked: tuple[float, list[RelayRef]] = (-1e9, [])

    async def __call__(self) -> list[RelayRef]:
        query = NetworkServiceEndpoint(network_service_names=[RELAY_SERVICE])
        cache = self.registry.cache
        if cache is not None and cache.endpoints_ready:
            return relays_of(cache.find_endpoints(query), self._trusted)
        at, known = self._asked
        if self._clock() - at < self.ASK_EVERY:
            return known
        found = relays_of(await self.registry.find_endpoints(query, attempts=1), self._trusted)
        self._asked = (self._clock(), found)
        return found


async def advertise(registry: RegistryClient, agent: str, url: str, relay: RelayRef) -> None:
    """Until cancelled: keep this agent's relay record in the registry; unregister it at the end."""
    registered = False
    try:
        while True:
            try:
                await registry.endpoints.Register(
                    relay_record(agent, url, relay), timeout=registry.timeout, metadata=registry.metadata()
                )
                if not registered:
                    log.info("relay registered", address=str(relay))
                registered = True
            except grpc.aio.AioRpcError as exc:
                log.warning("registering the relay failed", error=exc.details())
            await asyncio.sleep(RENEW_EVERY)
    finally:
        if registered:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                await registry.endpoints.Unregister(
                    relay_record(agent, url, relay, 0), timeout=2.0, metadata=registry.metadata()
                )
