"""Trust between trust domains (`--trust-bundle TD=FILE`), in process (no root): who gets a
role, which CA may vouch for which ID, over real grpcio mutual TLS on a unix socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from nsm_api import registry_pb2_grpc
from nsm_api.registry_pb2 import NetworkServiceEndpoint, NetworkServiceEndpointQuery
from nsm_common.identity import issue
from nsm_common.identity.bundles import BundleError, TrustBundles
from nsm_common.identity.folder import IdentityFolder
from nsm_common.identity.spiffe_id import Roles, SpiffeId
from nsm_common.identity.svid import IdentityError
from nsm_common.identity.tls import channel_credentials, channel_options
from nsm_common.identity.transport import Transport
from nsm_registry.memory_store import MemoryStore
from nsm_registry.server import EndpointRegistry

HOME, AWAY, STRANGER = "home.test", "away.test", "stranger.test"


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    for td in (HOME, AWAY, STRANGER):
        issue.init_ca(tmp_path / f"ca-{td}", td)
    issue.issue(tmp_path / f"ca-{HOME}", f"spiffe://{HOME}/registry", tmp_path / "registry")
    issue.issue(tmp_path / f"ca-{AWAY}", f"spiffe://{AWAY}/registry", tmp_path / "away-registry")
    issue.issue(tmp_path / f"ca-{AWAY}", f"spiffe://{AWAY}/ns/web/sa/x", tmp_path / "away-workload")
    issue.issue(tmp_path / f"ca-{STRANGER}", f"spiffe://{STRANGER}/registry", tmp_path / "stranger-registry")
    # AWAY's bundle as a careless (or hostile) AWAY publishes it: its CA and another that
    # signs IDs of HOME. The handshake trusts it; the check after it does not.
    issue.init_ca(tmp_path / "rogue", HOME)
    issue.issue(tmp_path / "rogue", f"spiffe://{HOME}/registry", tmp_path / "forged")
    bundle = (tmp_path / f"ca-{AWAY}" / "ca.crt").read_bytes() + (tmp_path / "rogue" / "ca.crt").read_bytes()
    (tmp_path / "away-bundle.pem").write_bytes(bundle)
    return tmp_path


def test_federated_agents_and_registries_have_their_roles_workloads_none() -> None:
    roles = Roles(HOME, federated=frozenset({AWAY}))
    assert roles.role_of(SpiffeId.parse(f"spiffe://{AWAY}/node/n1")) == "agent"
    assert roles.role_of(SpiffeId.parse(f"spiffe://{AWAY}/registry")) == "registry"
    assert roles.role_of(SpiffeId.parse(f"spiffe://{AWAY}/ns/web/sa/x")) is None
    assert roles.role_of(SpiffeId.parse(f"spiffe://{STRANGER}/registry")) is None
    assert roles.role_of(SpiffeId.parse(f"spiffe://{HOME}/ns/web/sa/x")) == "workload"


def test_bad_bundle_entries_name_what_is_wrong(pki: Path) -> None:
    good = f"{AWAY}={pki / f'ca-{AWAY}' / 'ca.crt'}"
    assert TrustBundles.load([good], HOME).domains == {AWAY}
    (pki / "empty.pem").write_text("nothing here\n")
    for entries, why in [
        ([AWAY], "expected TRUST_DOMAIN=FILE"),
        ([f"{HOME}={pki / 'x'}"], "this component's own trust domain"),
        ([f"{AWAY}={pki / 'missing.pem'}"], "No such file"),
        ([f"{AWAY}={pki / 'empty.pem'}"], "holds no PEM certificate"),
        ([good, good], "given twice"),
        ([f"Bad_TD={pki / 'x'}"], "--trust-bundle"),
    ]:
        with pytest.raises(BundleError, match=why):
            TrustBundles.load(entries, HOME)
    with pytest.raises(IdentityError, match="needs an identity"):
        Transport.load(None, insecure=True, server=True, trust_bundles=[good])


@asynccontextmanager
async def served(pki: Path, bundles: list[str]) -> AsyncIterator[str]:
    transport = Transport.load(pki / "registry", insecure=False, server=True, trust_bundles=bundles)
    store = MemoryStore()
    server = grpc.aio.server()
    registry_pb2_grpc.add_NetworkServiceEndpointRegistryServicer_to_server(
        EndpointRegistry(store, 60.0, transport), server
    )
    target = f"unix:{pki}/registry.sock"
    transport.bind_tls_socket(server, str(pki / "registry.sock"))
    await server.start()
    try:
        yield target
    finally:
        await server.stop(None)
        await store.close()


async def find_as(pki: Path, target: str, who: str, extra_roots: bytes) -> tuple[grpc.StatusCode, str]:
    svid = IdentityFolder(pki / who, server=False).current()
    channel = grpc.aio.secure_channel(
        target,
        channel_credentials(svid, extra_roots),
        options=channel_options(SpiffeId.parse(f"spiffe://{HOME}/registry")),
    )
    stub = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)
    try:
        async for _ in stub.Find(
            NetworkServiceEndpointQuery(network_service_endpoint=NetworkServiceEndpoint()), timeout=5
        ):
            pass
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    finally:
        await channel.close(None)


async def test_a_federated_registry_is_let_in_and_nobody_else(pki: Path) -> None:
    home_ca = (pki / f"ca-{HOME}" / "ca.crt").read_bytes()
    away = f"{AWAY}={pki / 'away-bundle.pem'}"
    async with served(pki, [away]) as target:
        assert await find_as(pki, target, "away-registry", home_ca) == (grpc.StatusCode.OK, "")
        code, why = await find_as(pki, target, "away-workload", home_ca)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "is of trust domain away.test" in why
        # AWAY's bundle is trusted for AWAY's IDs only: a HOME ID one of its CAs signed is refused.
        code, why = await find_as(pki, target, "forged", home_ca)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert why == f"Find: spiffe://{HOME}/registry's certificate is not issued by a CA of trust domain {HOME}"
        # A trust domain without a bundle here does not get through the handshake.
        code, _ = await find_as(pki, target, "stranger-registry", home_ca)
        assert code == grpc.StatusCode.UNAVAILABLE
    async with served(pki, []) as target:  # no bundle: AWAY's registry is a stranger too
        code, _ = await find_as(pki, target, "away-registry", home_ca)
        assert code == grpc.StatusCode.UNAVAILABLE
