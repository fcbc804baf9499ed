"""Other trust domains' CAs (`--trust-bundle TRUST_DOMAIN=FILE`), as SPIFFE federation has
them: an agent or registry of a federated trust domain is let in, and only by a
certificate of that trust domain's own CAs.

grpcio checks a peer's chain against all trusted CAs at once; which CA signed it is checked
here, after the handshake: a CA of one trust domain cannot vouch for an ID of another
(also not for this component's own trust domain). Certificates must be issued straight by
a CA of the bundle (as this project's `nsmctl identity` and cert-manager's CA issuer do).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from nsm_common.identity.spiffe_id import SpiffeId, SpiffeIdError

FLAG = "--trust-bundle (env NSM_TRUST_BUNDLES)"


class BundleError(ValueError):
    """A trust bundle entry that cannot be used; the message names the entry and why."""


@dataclass(frozen=True)
class TrustBundles:
    """The federated trust domains and their CAs (PEM, and parsed)."""

    pems: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def load(cls, entries: Iterable[str], own: str | None = None) -> TrustBundles:
        """From `TRUST_DOMAIN=FILE` entries; BundleError naming the entry. OWN, this component's
        trust domain, is refused: its CAs are its identity's `ca.crt`."""
        pems: dict[str, bytes] = {}
        for entry in entries:
            domain, sep, path = entry.partition("=")
            if not sep or not path:
                raise BundleError(f"{FLAG} {entry!r}: expected TRUST_DOMAIN=FILE")
            try:
                td = SpiffeId.of_trust_domain(domain).trust_domain
            except SpiffeIdError as exc:
                raise BundleError(f"{FLAG} {entry!r}: {exc}") from None
            if td == own:
                raise BundleError(f"{FLAG} {entry!r}: {td} is this component's own trust domain (its ca.crt)")
            if td in pems:
                raise BundleError(f"{FLAG} {entry!r}: {td} is given twice")
            try:
                pem = Path(path).read_bytes()
            except OSError as exc:
                raise BundleError(f"{FLAG} {entry!r}: {path}: {exc.strerror}") from None
            try:
                if not x509.load_pem_x509_certificates(pem):
                    raise ValueError("no certificate")
            except ValueError as exc:
                raise BundleError(f"{FLAG} {entry!r}: {path} holds no PEM certificate ({exc})") from None
            pems[td] = pem
        return cls(pems)

    @functools.cached_property
    def domains(self) -> frozenset[str]:  # asked per call (roles): made once
        return frozenset(self.pems)

    @functools.cached_property
    def roots(self) -> bytes:
        """Every federated CA, to add to the component's own for grpcio."""
        return b"".join(pem if pem.endswith(b"\n") else pem + b"\n" for pem in self.pems.values())

    def problem(self, spiffe_id: SpiffeId, cert_pem: bytes, own_bundle: bytes) -> str | None:
        """Why the certificate CERT_PEM may not speak for SPIFFE_ID (None: it may): it must be
        issued by a CA of that ID's trust domain (OWN_BUNDLE for this component's own)."""
        bundle = self.pems.get(spiffe_id.trust_domain, own_bundle)
        if _issued_by(cert_pem, bundle):
            return None
        return f"{spiffe_id}'s certificate is not issued by a CA of trust domain {spiffe_id.trust_domain}"


@functools.lru_cache(maxsize=1024)
def _issued_by(cert_pem: bytes, bundle_pem: bytes) -> bool:
    # Per connection's certificate, once: a signature check costs about a tenth of a millisecond.
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
        cas = x509.load_pem_x509_certificates(bundle_pem)
    except (ValueError, IndexError):
        return False
    for ca in cas:
        try:
            leaf.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False
