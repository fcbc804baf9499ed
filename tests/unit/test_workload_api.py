"""Identities from the SPIFFE Workload API: a server of the standard protocol (the Workload
API's own message definitions, as the `spiffe` package ships them; on a unix socket, with
the header the standard requires) hands out an SVID, then a rotated one on the same stream.

Not covered: SPIRE itself (not installed here); what it sends is what this server sends.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe._proto import workload_pb2, workload_pb2_grpc

from nsm_common.identity import issue
from nsm_common.identity.spiffe_id import SpiffeId
from nsm_common.identity.svid import IdentityError
from nsm_common.identity.transport import Transport
from nsm_common.identity.workload_api import WorkloadApiIdentity

SID = "spiffe://example.org/node/n1"


def response(folder: Path) -> workload_pb2.X509SVIDResponse:
    """An X509SVIDResponse for the identity in FOLDER: DER chain, PKCS#8 DER key, DER bundle."""
    chain = x509.load_pem_x509_certificates((folder / "tls.crt").read_bytes())
    key = serialization.load_pem_private_key((folder / "tls.key").read_bytes(), None)
    cas = x509.load_pem_x509_certificates((folder / "ca.crt").read_bytes())
    der = serialization.Encoding.DER
    svid = workload_pb2.X509SVID(
        spiffe_id=SID,
        x509_svid=b"".join(c.public_bytes(der) for c in chain),
        x509_svid_key=key.private_bytes(der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        bundle=b"".join(c.public_bytes(der) for c in cas),
    )
    return workload_pb2.X509SVIDResponse(svids=[svid])


class WorkloadApi(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    """Sends what is put on `updates`, one response per item, on each FetchX509SVID stream."""

    def __init__(self) -> None:
        self.updates: queue.Queue[workload_pb2.X509SVIDResponse] = queue.Queue()
        self.headers: list[str] = []

    def FetchX509SVID(  # type: ignore[override]
        self, request: workload_pb2.X509SVIDRequest, context: grpc.ServicerContext
    ) -> Iterator[workload_pb2.X509SVIDResponse]:
        self.headers += [str(v) for k, v in context.invocation_metadata() if k == "workload.spiffe.io"]
        if "true" not in self.headers:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
        while context.is_active():
            try:
                yield self.updates.get(timeout=0.1)
            except queue.Empty:
                continue


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[str, WorkloadApi]]:
    servicer = WorkloadApi()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(servicer, server)
    sock = tmp_path / "agent.sock"
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    try:
        yield f"unix://{sock}", servicer
    finally:
        server.stop(None)


def test_the_svid_and_its_rotations_come_from_the_workload_api(
    tmp_path: Path, api: tuple[str, WorkloadApi], monkeypatch: pytest.MonkeyPatch
) -> None:
    socket, servicer = api
    issue.init_ca(tmp_path / "ca", "example.org")
    issue.issue(tmp_path / "ca", SID, tmp_path / "first")
    servicer.updates.put(response(tmp_path / "first"))
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", socket)
    transport = Transport.load(None, insecure=False, server=True)
    assert isinstance(transport.identity, WorkloadApiIdentity) and servicer.headers == ["true"]
    first = transport.identity.current()
    assert str(first.spiffe_id) == SID and first.dns_names == ("n1.node.example.org",)
    assert transport.roles is not None and transport.roles.trust_domain == "example.org"

    # A rotation, with a second CA in the bundle (CA rotation) on the same stream.
    issue.init_ca(tmp_path / "ca2", "example.org")
    issue.issue(tmp_path / "ca2", SID, tmp_path / "second")
    bundle = (tmp_path / "ca" / "ca.crt").read_bytes() + (tmp_path / "ca2" / "ca.crt").read_bytes()
    (tmp_path / "second" / "ca.crt").write_bytes(bundle)
    servicer.updates.put(response(tmp_path / "second"))
    deadline = time.monotonic() + 10
    while transport.identity.current().fingerprint == first.fingerprint and time.monotonic() < deadline:
        time.sleep(0.05)
    second = transport.identity.current()
    assert second.fingerprint != first.fingerprint
    assert second.cert_pem == (tmp_path / "second" / "tls.crt").read_bytes()
    assert len(x509.load_pem_x509_certificates(second.bundle_pem)) == 2

    # A rotation to a server certificate without the DNS SAN is not taken.
    issue.issue(tmp_path / "ca2", SID, tmp_path / "third", dns_names=[])
    servicer.updates.put(response(tmp_path / "third"))
    time.sleep(0.5)
    assert transport.identity.current().fingerprint == second.fingerprint
    transport.identity.close()


def test_no_workload_api_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match=r"SPIFFE_ENDPOINT_SOCKET=unix://.*: no X\.509 SVID from the Workload API"):
        WorkloadApiIdentity(f"unix://{tmp_path}/none.sock", server=True, timeout=1.0)


def test_federated_bundles_from_the_workload_api_let_that_trust_domain_in(
    tmp_path: Path, api: tuple[str, WorkloadApi], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPIRE federating with away.test sends its bundle in `federated_bundles`: away.test's
    agents and registries get their roles, and only away.test's CAs vouch for its IDs."""
    socket, servicer = api
    issue.init_ca(tmp_path / "ca", "example.org")
    issue.issue(tmp_path / "ca", SID, tmp_path / "own")
    issue.init_ca(tmp_path / "away", "away.test")
    message = response(tmp_path / "own")
    away_cas = x509.load_pem_x509_certificates((tmp_path / "away" / "ca.crt").read_bytes())
    message.federated_bundles["spiffe://away.test"] = b"".join(
        c.public_bytes(serialization.Encoding.DER) for c in away_cas
    )
    servicer.updates.put(message)
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", socket)
    transport = Transport.load(None, insecure=False, server=True)
    assert isinstance(transport.identity, WorkloadApiIdentity)
    own = transport.identity.current()
    own_ca = x509.load_pem_x509_certificates((tmp_path / "ca" / "ca.crt").read_bytes())
    assert x509.load_pem_x509_certificates(own.own_bundle) == own_ca
    assert len(x509.load_pem_x509_certificates(own.bundle_pem)) == 2  # the handshake trusts both
    assert transport.trust().domains == {"away.test"}
    roles = transport.roles
    assert roles is not None and roles.role_of(SpiffeId.parse("spiffe://away.test/registry")) == "registry"
    assert [str(i) for i in transport.registry_ids()] == [
        "spiffe://example.org/registry",
        "spiffe://away.test/registry",
    ]
    # away.test's CA cannot vouch for an ID of example.org.
    issue.init_ca(tmp_path / "rogue", "example.org")
    issue.issue(tmp_path / "rogue", "spiffe://example.org/registry", tmp_path / "forged")
    forged = (tmp_path / "forged" / "tls.crt").read_bytes()
    problem = transport.trust().problem(SpiffeId.parse("spiffe://example.org/registry"), forged, own.own_bundle)
    assert problem is not None and "not issued by a CA of trust domain example.org" in problem
    transport.identity.close()
