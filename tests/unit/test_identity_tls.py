"""What `nsmctl certs` makes works with grpcio's mutual TLS, as the wiring of the next
steps relies on (over a unix socket: no network).

Pinned here: a client certificate with only a URI SAN is accepted and its SPIFFE ID
read from the server's auth context; a server is verified by the DNS SAN derived from
its SPIFFE ID, with `grpc.ssl_target_name_override`; a client without a certificate,
or with one of another CA, does not get through.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from nsm_common.identity import issue, svid
from nsm_common.identity.spiffe_id import SpiffeId

METHOD = "/test.Identity/Who"


class Health:
    """A one-method service over raw bytes: answers b"ok" and remembers the caller's SPIFFE ID."""

    def __init__(self) -> None:
        self.callers: list[str] = []

    def who(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        sans: list[bytes] = context.auth_context().get("x509_subject_alternative_name", [])  # type: ignore[assignment]
        self.callers += [s.decode() for s in sans if s.startswith(b"spiffe://")]
        return b"ok"

    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        return grpc.method_handlers_generic_handler(
            "test.Identity", {"Who": grpc.unary_unary_rpc_method_handler(self.who)}
        )


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    issue.init_ca(tmp_path / "ca", "example.org")
    issue.issue(tmp_path / "ca", "spiffe://example.org/registry", tmp_path / "server")
    issue.issue(tmp_path / "ca", "spiffe://example.org/node/n1", tmp_path / "agent", dns_names=[])
    issue.init_ca(tmp_path / "rogue-ca", "example.org")
    issue.issue(tmp_path / "rogue-ca", "spiffe://example.org/node/n1", tmp_path / "rogue", dns_names=[])
    return tmp_path


@pytest.fixture
def server(pki: Path) -> Iterator[tuple[str, Health]]:
    ident = svid.load(pki / "server", server=True)
    creds = grpc.ssl_server_credentials([(ident.key_pem, ident.cert_pem)], root_certificates=ident.bundle_pem,
                                        require_client_auth=True)  # fmt: skip
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health = Health()
    srv.add_generic_rpc_handlers((health.handler(),))
    target = f"unix:{pki}/server.sock"
    srv.add_secure_port(target, creds)
    srv.start()
    yield target, health
    srv.stop(None)


def call(target: str, client: Path | None, bundle: Path, name: str) -> bytes:
    key = cert = None
    if client is not None:
        ident = svid.load(client, server=False)
        key, cert = ident.key_pem, ident.cert_pem
    creds = grpc.ssl_channel_credentials((bundle / "ca.crt").read_bytes(), key, cert)
    with grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", name)]) as ch:
        reply: bytes = ch.unary_unary(METHOD, None, None)(b"", timeout=5)
    return reply


def test_a_uri_only_client_is_accepted_and_known_by_its_spiffe_id(pki: Path, server: tuple[str, Health]) -> None:
    target, health = server
    name = SpiffeId.parse("spiffe://example.org/registry").dns_name()
    assert call(target, pki / "agent", pki / "server", name) == b"ok"
    assert health.callers == ["spiffe://example.org/node/n1"]


def test_the_server_is_verified_by_its_derived_dns_name(pki: Path, server: tuple[str, Health]) -> None:
    target, _ = server
    with pytest.raises(grpc.RpcError) as failed:
        call(target, pki / "agent", pki / "server", "n2.node.example.org")
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


@pytest.mark.parametrize("client", [None, "rogue"])
def test_no_certificate_or_another_cas_does_not_get_through(
    pki: Path, server: tuple[str, Health], client: str | None
) -> None:
    target, health = server
    with pytest.raises(grpc.RpcError) as failed:
        call(target, pki / client if client else None, pki / "server", "registry.example.org")
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert health.callers == []


def test_a_rotated_server_identity_serves_new_connections_and_keeps_live_ones(pki: Path) -> None:
    """CA rotation: the server's folder gets a bundle of old and new CA, then a certificate
    of the new CA. A channel made before keeps working; a new channel that trusts only the
    new CA gets through, so the server presented its new certificate."""
    from nsm_common.identity.folder import IdentityFolder
    from nsm_common.identity.tls import channel_credentials, peer_id, server_credentials

    folder = IdentityFolder(pki / "server", server=True, interval=0)
    health = Health()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    srv.add_generic_rpc_handlers((health.handler(),))
    target = f"unix:{pki}/rotating.sock"
    srv.add_secure_port(target, server_credentials(folder))
    srv.start()
    try:
        opts = [("grpc.ssl_target_name_override", "registry.example.org")]
        agent = svid.load(pki / "agent", server=False)
        before = grpc.secure_channel(target, channel_credentials(agent), options=opts)
        assert before.unary_unary(METHOD, None, None)(b"", timeout=5) == b"ok"

        issue.init_ca(pki / "new-ca", "example.org")
        both = (pki / "ca" / "ca.crt").read_bytes() + (pki / "new-ca" / "ca.crt").read_bytes()
        issue.issue(pki / "new-ca", "spiffe://example.org/registry", pki / "server")
        (pki / "server" / "ca.crt").write_bytes(both)
        assert folder.refresh() or folder.current().bundle_pem == both
        assert before.unary_unary(METHOD, None, None)(b"", timeout=5) == b"ok"  # the live connection stays

        issue.issue(pki / "new-ca", "spiffe://example.org/node/n1", pki / "agent2", dns_names=[])
        new_only = svid.load(pki / "agent2", server=False)
        with grpc.secure_channel(target, channel_credentials(new_only), options=opts) as after:
            assert after.unary_unary(METHOD, None, None)(b"", timeout=5) == b"ok"
        before.close()
    finally:
        srv.stop(None)
    assert health.callers == ["spiffe://example.org/node/n1"] * 3
    assert peer_id({"x509_subject_alternative_name": [b"n1.example.org", b"spiffe://example.org/node/n1"]}) == (
        SpiffeId.parse("spiffe://example.org/node/n1")
    )
    assert peer_id({}) is None
    assert peer_id({"x509_subject_alternative_name": [b"spiffe://a/x", b"spiffe://a/y"]}) is None


def test_a_broken_renewal_is_not_taken(pki: Path) -> None:
    from nsm_common.identity.folder import IdentityFolder

    folder = IdentityFolder(pki / "server", server=True, interval=0)
    kept = folder.current().fingerprint
    (pki / "server" / "tls.key").write_bytes((pki / "agent" / "tls.key").read_bytes())
    assert not folder.refresh()
    assert folder.current().fingerprint == kept
