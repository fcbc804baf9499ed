"""Registries of several domains, in process (no root): `NAME@DOMAIN` calls passed on to that
domain's registry over real grpcio mutual TLS on loopback TCP, found by the static map or by
a real DNS server; names stripped there and put back here; watches and expiry across the
boundary; a floating registry; the refusals, each with its reason."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from dnslib import SRV, A

from nsm_api import registry_pb2_grpc
from nsm_api.registry_pb2 import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceEndpointResponse,
    NetworkServiceLabels,
    NetworkServiceQuery,
)
from nsm_common.identity import issue
from nsm_common.identity.folder import IdentityFolder
from nsm_common.identity.spiffe_id import SpiffeId
from nsm_common.identity.tls import channel_credentials, channel_options
from nsm_common.identity.transport import Transport
from nsm_common.policy.policies import Policies
from nsm_common.registry_path import call_metadata
from nsm_common.timeutil import now, ts_seconds
from nsm_common.urls import Address, parse_address
from nsm_registry.domain_registries import DomainRegistries
from nsm_registry.federation import Federation
from nsm_registry.memory_store import MemoryStore
from nsm_registry.registrants import Registrants
from nsm_registry.server import EndpointRegistry, ServiceRegistry, run_expiry
from tests.helpers.dns_zone import resolver_for, serving

TD = "example.org"
REGISTRY = f"spiffe://{TD}/registry"
AGENT = f"spiffe://{TD}/node/n1"
URL = "tcp://198.51.100.7:5001"  # an agent's public URL: only stored, never dialled


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    issue.init_ca(tmp_path / "ca", TD)
    for name, sid in (("registry", REGISTRY), ("agent", AGENT)):
        issue.issue(tmp_path / "ca", sid, tmp_path / name)
    return tmp_path


@dataclass
class Served:
    address: Address
    store: MemoryStore


@asynccontextmanager
async def registry(
    pki: Path,
    domain: str,
    static: Mapping[str, Address] | None = None,
    floating: bool = False,
    dns: tuple[str, int] | None = None,
    max_expiration: float = 60.0,
) -> AsyncIterator[Served]:
    """A registry of DOMAIN on a loopback TCP port, with mutual TLS, its peers in STATIC or DNS."""
    transport = Transport.load(pki / "registry", insecure=False, server=True)
    resolver = resolver_for(dns) if dns else resolver_for(("127.0.0.1", 9))  # no DNS: nothing answers
    federation = Federation(domain, DomainRegistries(static, resolver), transport, floating=floating)
    registrants = Registrants(transport, Policies())
    store = MemoryStore()
    server = grpc.aio.server()
    registry_pb2_grpc.add_NetworkServiceRegistryServicer_to_server(
        ServiceRegistry(store, transport, registrants, federation), server
    )
    registry_pb2_grpc.add_NetworkServiceEndpointRegistryServicer_to_server(
        EndpointRegistry(store, max_expiration, transport, registrants, federation), server
    )
    port = transport.bind(server, parse_address("tcp://127.0.0.1:0"))
    await server.start()
    expiry = asyncio.create_task(run_expiry(store, poll=0.05))
    try:
        yield Served(parse_address(f"tcp://127.0.0.1:{port}"), store)
    finally:
        expiry.cancel()
        await server.stop(None)
        await federation.close()
        await store.close()


@dataclass
class Client:
    """An agent's calls of one registry: both stubs over one mutual-TLS channel, with its token."""

    channel: grpc.aio.Channel
    ns: registry_pb2_grpc.NetworkServiceRegistryAsyncStub
    nse: registry_pb2_grpc.NetworkServiceEndpointRegistryAsyncStub
    token: tuple[tuple[str, str | bytes], ...]

    async def endpoints(self, query: NetworkServiceEndpoint) -> list[NetworkServiceEndpoint]:
        q = NetworkServiceEndpointQuery(network_service_endpoint=query)
        return [r.network_service_endpoint async for r in self.nse.Find(q, timeout=5)]


@asynccontextmanager
async def client(pki: Path, served: Served) -> AsyncIterator[Client]:
    identity = IdentityFolder(pki / "agent", server=False)
    channel = grpc.aio.secure_channel(
        served.address.grpc_target,
        channel_credentials(identity.current()),
        options=channel_options(SpiffeId.parse(REGISTRY)),
    )
    try:
        yield Client(
            channel,
            registry_pb2_grpc.NetworkServiceRegistryStub(channel),  # type: ignore[arg-type]
            registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel),  # type: ignore[arg-type]
            call_metadata(identity, REGISTRY),
        )
    finally:
        await channel.close(None)


async def _names(stream: AsyncIterator[object]) -> list[str]:
    """The names in a store watch's first answer: every record it holds."""
    first = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert isinstance(first, list)
    return sorted(r.name for r in first)


async def services(store: MemoryStore) -> list[str]:
    return await _names(store.watch_services())


async def endpoints(store: MemoryStore) -> list[str]:
    return await _names(store.watch_endpoints())


async def refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code(), info.value.details() or ""


def endpoint(name: str, service: str, url: str = URL) -> NetworkServiceEndpoint:
    return NetworkServiceEndpoint(
        name=name,
        network_service_names=[service],
        network_service_labels={service: NetworkServiceLabels(labels={"app": "db"})},
        url=url,
    )


async def test_a_name_of_another_domain_is_served_by_its_registry_stripped_there(pki: Path) -> None:
    async with (
        registry(pki, "cluster2", max_expiration=30.0) as c2,
        registry(pki, "cluster1", {"cluster2": c2.address}) as c1,
        client(pki, c1) as agent,
    ):
        stored = await agent.ns.Register(NetworkService(name="svc@cluster2"), timeout=5, metadata=agent.token)
        assert stored.name == "svc@cluster2" and stored.payload == "IP"
        assert await services(c2.store) == ["svc"]  # plain there
        assert await services(c1.store) == []  # nothing kept here

        got = await agent.nse.Register(endpoint("db@cluster2", "svc@cluster2"), timeout=5, metadata=agent.token)
        assert got.name == "db@cluster2" and list(got.network_service_names) == ["svc@cluster2"]
        assert list(got.network_service_labels) == ["svc@cluster2"]
        # The far registry names and caps the record: its 30 s, not this one's 60.
        assert ts_seconds(got.expiration_time) - now() == pytest.approx(30, abs=3)
        there = await c2.store.get_endpoint("db")
        assert there is not None and list(there.network_service_names) == ["svc"]
        assert list(there.network_service_labels) == ["svc"] and there.url == URL
        # Whom the record's URL answers as: the agent, not the registry that passed it on.
        assert list(there.path_ids) == [AGENT]

        found = await agent.endpoints(NetworkServiceEndpoint(network_service_names=["svc@cluster2"]))
        assert [e.name for e in found] == ["db@cluster2"] and found[0].url == URL
        by_name = await agent.endpoints(NetworkServiceEndpoint(name="db@cluster2"))
        assert [e.name for e in by_name] == ["db@cluster2"]
        query = NetworkServiceQuery(network_service=NetworkService(name="svc@cluster2"))
        assert [r.network_service.name async for r in agent.ns.Find(query, timeout=5)] == ["svc@cluster2"]

        await agent.nse.Unregister(NetworkServiceEndpoint(name="db@cluster2"), timeout=5, metadata=agent.token)
        await agent.ns.Unregister(NetworkService(name="svc@cluster2"), timeout=5, metadata=agent.token)
        assert await c2.store.get_endpoint("db") is None and await services(c2.store) == []


async def test_a_watch_across_the_boundary_sees_registrations_and_their_end(pki: Path) -> None:
    async with (
        registry(pki, "cluster2") as c2,
        client(pki, c2) as far_agent,
        registry(pki, "cluster1", {"cluster2": c2.address}) as c1,
        client(pki, c1) as agent,
    ):
        query = NetworkServiceEndpointQuery(
            network_service_endpoint=NetworkServiceEndpoint(network_service_names=["svc@cluster2"]), watch=True
        )
        stream = agent.nse.Find(query)
        await far_agent.nse.Register(endpoint("db", "svc"), timeout=5, metadata=far_agent.token)
        first = await asyncio.wait_for(stream.read(), 5)
        assert isinstance(first, NetworkServiceEndpointResponse)
        assert first.network_service_endpoint.name == "db@cluster2" and not first.deleted
        await far_agent.nse.Unregister(NetworkServiceEndpoint(name="db"), timeout=5, metadata=far_agent.token)
        gone = await asyncio.wait_for(stream.read(), 5)
        assert isinstance(gone, NetworkServiceEndpointResponse)
        assert gone.network_service_endpoint.name == "db@cluster2" and gone.deleted
        stream.cancel()


async def test_its_own_domain_is_this_registry(pki: Path) -> None:
    async with registry(pki, "cluster1") as c1, client(pki, c1) as agent:
        stored = await agent.nse.Register(endpoint("db@cluster1", "svc@cluster1"), timeout=5, metadata=agent.token)
        assert stored.name == "db@cluster1"
        assert await endpoints(c1.store) == ["db"]
        plain = await agent.endpoints(NetworkServiceEndpoint(network_service_names=["svc"]))
        suffixed = await agent.endpoints(NetworkServiceEndpoint(network_service_names=["svc@cluster1"]))
        assert [e.name for e in plain] == ["db"] and [e.name for e in suffixed] == ["db@cluster1"]


async def test_dns_finds_the_far_registry(pki: Path) -> None:
    async with registry(pki, "cluster2") as c2:
        records = {
            ("registry.nsm-system.cluster2.", "SRV"): SRV(priority=0, weight=0, port=c2.address.port, target="x."),
            ("registry.nsm-system.cluster2.", "A"): A("127.0.0.1"),
        }
        with serving(records) as (zone, address):
            async with registry(pki, "cluster1", dns=address) as c1, client(pki, c1) as agent:
                await agent.ns.Register(NetworkService(name="svc@cluster2"), timeout=5, metadata=agent.token)
                await agent.ns.Register(NetworkService(name="web@cluster2"), timeout=5, metadata=agent.token)
                assert await services(c2.store) == ["svc", "web"]
                # Asked once: the answer is kept for a while.
                assert zone.asked == [("registry.nsm-system.cluster2.", "SRV"), ("registry.nsm-system.cluster2.", "A")]
                code, why = await refused(agent.endpoints(NetworkServiceEndpoint(network_service_names=["x@nowhere"])))
                assert code == grpc.StatusCode.NOT_FOUND
                assert "no registry for domain nowhere: registry.nsm-system.nowhere" in why


async def test_a_floating_registry_holds_what_every_domain_registers(pki: Path) -> None:
    async with (
        registry(pki, "floating", floating=True) as fl,
        registry(pki, "cluster2", {"floating": fl.address}) as c2,
        registry(pki, "cluster1", {"floating": fl.address}) as c1,
        client(pki, c2) as server_side,
        client(pki, c1) as client_side,
    ):
        await server_side.nse.Register(endpoint("db@floating", "svc@floating"), timeout=5, metadata=server_side.token)
        assert await endpoints(fl.store) == ["db"]
        found = await client_side.endpoints(NetworkServiceEndpoint(network_service_names=["svc@floating"]))
        assert [(e.name, e.url) for e in found] == [("db@floating", URL)]
        # Only URLs other domains reach: a unix socket is refused on the way and at the floating registry.
        code, why = await refused(
            server_side.nse.Register(
                endpoint("x@floating", "svc@floating", "unix:///e.sock"), timeout=5, metadata=server_side.token
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "--public-url" in why
        async with client(pki, fl) as direct:
            code, why = await refused(
                direct.nse.Register(endpoint("x", "svc", "unix:///e.sock"), timeout=5, metadata=direct.token)
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "floating registry keeps only URLs" in why
            code, why = await refused(direct.endpoints(NetworkServiceEndpoint(network_service_names=["s@c2"])))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "passes nothing on" in why


async def test_names_no_registry_here_can_answer_are_refused_with_why(pki: Path) -> None:
    async with registry(pki, "") as lone, client(pki, lone) as agent:
        code, why = await refused(
            agent.ns.Register(NetworkService(name="svc@cluster2"), timeout=5, metadata=agent.token)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "no domain of its own (--domain" in why
        assert await services(lone.store) == []
    async with registry(pki, "cluster1") as c1, client(pki, c1) as agent:
        mixed = NetworkServiceEndpoint(network_service_names=["a@cluster2", "b@cluster3"])
        code, why = await refused(agent.endpoints(mixed))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "names of 2 domains in one call" in why
        code, why = await refused(agent.ns.Register(NetworkService(name="svc@bad_x"), timeout=5, metadata=agent.token))
        assert code == grpc.StatusCode.INVALID_ARGUMENT  # the API's name check: not a DNS subdomain


async def test_a_far_registry_away_is_a_clear_error(pki: Path) -> None:
    nobody = parse_address("tcp://127.0.0.1:9")  # the discard port: nothing serves gRPC there
    async with registry(pki, "cluster1", {"cluster2": nobody}) as c1, client(pki, c1) as agent:
        code, why = await refused(
            agent.ns.Register(NetworkService(name="svc@cluster2"), timeout=5, metadata=agent.token)
        )
        assert code == grpc.StatusCode.UNAVAILABLE
        assert why.startswith("registry of domain cluster2 at tcp://127.0.0.1:9: ")
        assert await services(c1.store) == []


async def test_a_far_registration_not_renewed_expires_there_and_a_watch_here_sees_it_go(pki: Path) -> None:
    async with (
        registry(pki, "cluster2", max_expiration=1.0) as c2,
        registry(pki, "cluster1", {"cluster2": c2.address}) as c1,
        client(pki, c1) as agent,
    ):
        query = NetworkServiceEndpointQuery(
            network_service_endpoint=NetworkServiceEndpoint(name="db@cluster2"), watch=True
        )
        stream = agent.nse.Find(query)
        got = await agent.nse.Register(endpoint("db@cluster2", "svc@cluster2"), timeout=5, metadata=agent.token)
        assert ts_seconds(got.expiration_time) - now() <= 1.1  # capped by the far registry: renew by then
        first = await asyncio.wait_for(stream.read(), 5)
        assert isinstance(first, NetworkServiceEndpointResponse) and not first.deleted
        gone = await asyncio.wait_for(stream.read(), 5)
        assert isinstance(gone, NetworkServiceEndpointResponse) and gone.deleted
        assert gone.network_service_endpoint.name == "db@cluster2"
        assert await endpoints(c2.store) == []
        stream.cancel()
