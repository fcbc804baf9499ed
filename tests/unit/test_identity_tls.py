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
