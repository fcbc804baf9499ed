"""The transport's decisions (in process, no root): when TCP is refused, what a client must
name, which callers get in, and what the registry notes of a registrant. The calls run over
real grpcio mutual TLS on unix sockets (no network)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import jwt
import pytest

from nsm_agent.pipeline.connect import ConnectEndpoint
from nsm_api import registry_pb2_grpc
from nsm_api.registry_pb2 import NetworkServiceEndpoint
from nsm_common.identity import issue
from nsm_common.identity.folder import IdentityFolder
from nsm_common.identity.spiffe_id import Roles, SpiffeId
from nsm_common.identity.tls import channel_credentials, channel_options, server_credentials
from nsm_common.identity.transport import LOCAL_ONLY, Transport, TransportError, refusal
from nsm_common.policy.policies import Policies
from nsm_common.registry_path import RegistryPath, call_metadata
from nsm_common.tokens import to_metadata
from nsm_common.urls import parse_address
from nsm_registry.memory_store import MemoryStore
from nsm_registry.registrants import Registrants
from nsm_registry.server import EndpointRegistry

TD = "example.org"
REGISTRY = f"spiffe://{TD}/registry"
AGENT = f"spiffe://{TD}/node/n1"
WORKLOAD = f"spiffe://{TD}/ns/web/sa/frontend"


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    issue.init_ca(tmp_path / "ca", TD)
    for name, sid in (("registry", REGISTRY), ("agent", AGENT), ("workload", WORKLOAD)):
        issue.issue(tmp_path / "ca", sid, tmp_path / name)
    issue.issue(tmp_path / "ca", f"spiffe://{TD}/tools/scan", tmp_path / "nobody")
    return tmp_path


def test_tcp_needs_an_identity_or_insecure_and_a_server_id(pki: Path) -> None:
    tcp, unix = parse_address("tcp://192.0.2.1:5001"), parse_address(f"unix://{pki}/x.sock")
    assert LOCAL_ONLY.credentials(unix, None)[0] is None
    with pytest.raises(TransportError, match=r"needs an identity: --identity DIR .* or --insecure"):
        LOCAL_ONLY.credentials(tcp, None)
    with pytest.raises(TransportError, match="needs an identity"):
        LOCAL_ONLY.check_listen([unix, tcp])
    plaintext = Transport(insecure=True)
    assert plaintext.credentials(tcp, None)[0] is None
    plaintext.check_listen([tcp])
    secure = Transport.load(pki / "agent", insecure=False, server=True)
    with pytest.raises(TransportError, match="needs the SPIFFE ID the server must have"):
        secure.credentials(tcp, None)
    creds, options = secure.credentials(tcp, SpiffeId.parse(REGISTRY))
    assert creds is not None and ("grpc.ssl_target_name_override", "registry.example.org") in options
    assert str(secure.registry_id()) == REGISTRY and LOCAL_ONLY.registry_id() is None


def test_who_may_do_what() -> None:
    roles = Roles(TD)
    both = ("agent", "workload", "registry")
    assert refusal(SpiffeId.parse(AGENT), roles, ("agent",), "Request") is None
    assert refusal(SpiffeId.parse(WORKLOAD), roles, both, "Register") is None
    assert refusal(SpiffeId.parse(WORKLOAD), roles, ("agent",), "Request") == (
        f"Request: {WORKLOAD} is a workload; only agents may"
    )
    assert refusal(SpiffeId.parse("spiffe://other.org/node/n1"), roles, ("agent",), "Close") == (
        "Close: spiffe://other.org/node/n1 is of trust domain other.org, not example.org; only agents may"
    )
    assert refusal(None, roles, ("agent",), "Request") == "Request: the caller's certificate has no single SPIFFE ID"
    assert refusal(SpiffeId.parse(f"spiffe://{TD}/x"), roles, ("agent", "workload"), "Find") == (
        f"Find: spiffe://{TD}/x is of no role; only agents and workloads may"
    )


def test_a_registry_pattern_with_placeholders_cannot_be_dialled(pki: Path) -> None:
    odd = Transport.load(pki / "agent", insecure=False, server=True, registry="spiffe://{trust_domain}/reg/{name}")
    with pytest.raises(TransportError, match="must be one ID to dial the registry"):
        odd.registry_id()


async def _served(pki: Path, transport: Transport) -> AsyncIterator[tuple[str, MemoryStore]]:
    store = MemoryStore()
    server = grpc.aio.server()
    registry_pb2_grpc.add_NetworkServiceEndpointRegistryServicer_to_server(
        EndpointRegistry(store, 60.0, transport, Registrants(transport, Policies())), server
    )
    target = f"unix:{pki}/registry.sock"
    server.add_secure_port(target, server_credentials(IdentityFolder(pki / "registry", server=True)))
    server.add_insecure_port(f"unix:{pki}/plain.sock")
    await server.start()
    try:
        yield target, store
    finally:
        await server.stop(None)
        await store.close()


def _token(pki: Path, who: str) -> tuple[tuple[str, str | bytes], ...]:
    """WHO's path token for the registry, as a caller sends it."""
    return call_metadata(IdentityFolder(pki / who, server=False), REGISTRY)


def _stub(
    pki: Path, target: str, who: str
) -> tuple[grpc.aio.Channel, registry_pb2_grpc.NetworkServiceEndpointRegistryAsyncStub]:
    svid = IdentityFolder(pki / who, server=False).current()
    channel = grpc.aio.secure_channel(
        target, channel_credentials(svid), options=channel_options(SpiffeId.parse(REGISTRY))
    )
    stub: registry_pb2_grpc.NetworkServiceEndpointRegistryAsyncStub = (
        registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)  # type: ignore[assignment]
    )
    return channel, stub


async def test_roles_decide_who_registers_and_the_registrant_is_noted(pki: Path) -> None:
    transport = Transport.load(pki / "registry", insecure=False, server=True)
    async for target, _ in _served(pki, transport):
        record = NetworkServiceEndpoint(name="ep1", network_service_names=["svc"], url="tcp://192.0.2.1:5001")
        channel, stub = _stub(pki, target, "agent")
        stored = await stub.Register(record, timeout=5, metadata=_token(pki, "agent"))
        assert list(stored.path_ids) == [AGENT]
        record.path_ids.append(AGENT)  # the record as the registry returned it, sent again
        assert list((await stub.Register(record, timeout=5, metadata=_token(pki, "agent"))).path_ids) == [AGENT]
        with pytest.raises(grpc.aio.AioRpcError) as info:  # no token: not on the path
            await stub.Register(record, timeout=5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "common/tokens_valid.rego" in (info.value.details() or "")
        await channel.close(None)
        channel, stub = _stub(pki, target, "workload")
        other = NetworkServiceEndpoint(name="ep2", url="tcp://192.0.2.9:1", network_service_names=["svc"])
        assert list((await stub.Register(other, timeout=5, metadata=_token(pki, "workload"))).path_ids) == [WORKLOAD]
        # ep1 is the agent's: the workload can neither take it over nor unregister it.
        as_workload = _token(pki, "workload")
        for call in (stub.Register(record, timeout=5, metadata=as_workload),
                     stub.Unregister(NetworkServiceEndpoint(name="ep1"), timeout=5, metadata=as_workload)):  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert f"by {WORKLOAD}: policy registry/registrant_owns_name.rego denies this" in (
                info.value.details() or ""
            )
            assert f"(the name is {AGENT}'s)" in (info.value.details() or "")
        # Nor by a token naming the agent (signed with the workload's key), nor by a path
        # claiming the agent asked first.
        svid = IdentityFolder(pki / "workload", server=False).current()
        forged = jwt.encode({"sub": AGENT, "aud": [REGISTRY], "exp": int(time.time()) + 60}, svid.key_pem,
                            algorithm="ES256")  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Register(record, timeout=5, metadata=to_metadata(forged, time.time() + 60))
        assert "server/prev_token_is_callers.rego" in (info.value.details() or "")
        relayed = RegistryPath(0, [forged])
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Register(
                record,
                timeout=5,
                metadata=call_metadata(
                    IdentityFolder(pki / "workload", server=False), REGISTRY, RegistryPath(1, [forged, ""])
                ),
            )
        assert "may register only in its own name" in (info.value.details() or ""), info.value.details()
        del relayed
        await channel.close(None)
        channel, stub = _stub(pki, target, "nobody")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Unregister(NetworkServiceEndpoint(name="ep1"), timeout=5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert info.value.details() == (f"Unregister: spiffe://{TD}/tools/scan is of no role; "
                                        "only agents, workloads and registries may")  # fmt: skip
        await channel.close(None)
        # The registry's own unix socket: plaintext, local, let through.
        plain = grpc.aio.insecure_channel(f"unix:{pki}/plain.sock")
        local: registry_pb2_grpc.NetworkServiceEndpointRegistryAsyncStub = (
            registry_pb2_grpc.NetworkServiceEndpointRegistryStub(plain)  # type: ignore[assignment]
        )
        stored = await local.Register(
            NetworkServiceEndpoint(name="ep3", url="unix:///x.sock", network_service_names=["svc"]), timeout=5
        )
        assert list(stored.path_ids) == []
        await plain.close(None)


async def test_a_client_makes_a_new_channel_once_its_identity_changes(pki: Path) -> None:
    transport = Transport.load(pki / "agent", insecure=False, server=False)
    assert isinstance(transport.identity, IdentityFolder)
    transport.identity.interval = 0.0
    step = ConnectEndpoint(5.0, transport=transport)
    url = "tcp://192.0.2.7:5001"  # channels connect lazily: nothing is sent
    step._stub(url, AGENT)
    first = step._channels[url]
    step._stub(url, AGENT)
    assert step._channels[url] is first
    issue.issue(pki / "ca", AGENT, pki / "agent", days=5)  # renewed
    await asyncio.sleep(0.01)
    step._stub(url, AGENT)
    assert step._channels[url] is not first and first in step._by_key.values()  # kept for what runs on it
    with pytest.raises(TransportError):
        ConnectEndpoint(5.0)._stub(url, AGENT)  # no identity, not insecure: never plaintext
    await step.aclose()
