"""Identities from the SPIFFE Workload API (SPIRE's agent, or any server of the standard
protocol) at `SPIFFE_ENDPOINT_SOCKET`, through the maintained `spiffe` package: it keeps the
stream open and takes each rotation as the server sends it; each new one is checked as a
folder's would be (a bad one is reported and the old kept)."""

from __future__ import annotations

import dataclasses
import threading

import structlog
from cryptography.hazmat.primitives import serialization
from spiffe import X509Source
from spiffe.errors import ArgumentError
from spiffe.workloadapi.errors import X509SourceError

from nsm_common.identity.svid import IdentityError, Sources, Svid, parse

log = structlog.get_logger()

ENV = "SPIFFE_ENDPOINT_SOCKET"
NAMES = Sources("the Workload API's X.509 SVID", "its key", "its bundles", "the Workload API's identity",
                "the certificate", "the key")  # fmt: skip


class WorkloadApiIdentity:
    """The default X.509 SVID and every bundle (federated ones too) the Workload API gives."""

    def __init__(self, socket: str, *, server: bool, timeout: float = 15.0) -> None:
        """Waits for the first SVID (raises IdentityError after TIMEOUT seconds, or on a bad one)."""
        self.socket = socket
        self.server = server
        self._lock = threading.Lock()
        # Set by the source's thread at each update: `current` (per call, per handshake) reads
        # and checks the materials only then.
        self._changed = threading.Event()
        try:
            self._source = X509Source(socket_path=socket, timeout_in_seconds=timeout)
        except (X509SourceError, ArgumentError, ValueError) as exc:
            raise IdentityError(f"{ENV}={socket}: no X.509 SVID from the Workload API ({exc})") from None
        self._source.subscribe_for_updates(self._changed.set)
        try:
            self._svid = self._read()
        except IdentityError:
            self._source.close()
            raise

    def _read(self) -> Svid:
        """The source's SVID and bundles now, as PEM, checked (raises IdentityError, X509SourceError)."""
        context = self._source.get_x509_context()
        svid = context.default_svid
        cert_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain)
        key_pem = svid.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        pem = serialization.Encoding.PEM
        by_domain = {
            bundle.trust_domain.name: b"".join(sorted(ca.public_bytes(pem) for ca in bundle.x509_authorities))
            for bundle in context.x509_bundle_set.bundles
        }
        bundle_pem = b"".join(sorted(by_domain.values()))
        svid_read = parse(cert_pem, key_pem, bundle_pem, server=self.server, names=NAMES)
        own = svid_read.spiffe_id.trust_domain
        federated = tuple(sorted((td, p) for td, p in by_domain.items() if td != own))
        return dataclasses.replace(svid_read, own_bundle_pem=by_domain.get(own, b""), federated_pems=federated)

    def current(self) -> Svid:
        """The identity to use now; a rotation the server sent since is taken if it is valid."""
        if not self._changed.is_set():
            return self._svid
        with self._lock:
            if not self._changed.is_set():
                return self._svid
            self._changed.clear()  # before reading: an update after this sets it again
            try:
                svid = self._read()
            except X509SourceError as exc:
                log.error("Workload API unavailable, keeping the identity in use", socket=self.socket, error=str(exc))
                return self._svid
            except IdentityError as exc:
                log.error("Workload API identity not taken, keeping the one in use", error=str(exc))
                return self._svid
            if svid.fingerprint != self._svid.fingerprint:
                log.info("identity rotated by the Workload API", id=str(svid.spiffe_id),
                         not_after=svid.not_after.isoformat())  # fmt: skip
                self._svid = svid
            return self._svid

    def close(self) -> None:
        self._source.close()
