"""An identity folder read and checked: the certificate, its key, the trust bundle.

The folder is a Kubernetes TLS Secret as cert-manager writes it (`tls.crt`, `tls.key`,
`ca.crt`); `ca.crt` may hold several CAs (a CA rotation in progress). Every problem is
reported in words that name the file and the fix.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from nsm_common.identity.issue import TLS_CA, TLS_CERT, TLS_KEY
from nsm_common.identity.spiffe_id import SpiffeId, SpiffeIdError


class IdentityError(ValueError):
    """An identity folder that cannot serve, with which file and why."""


@dataclass(frozen=True)
class Svid:
    """One identity as read from its folder: PEM bytes for gRPC, and what they say."""

    spiffe_id: SpiffeId
    dns_names: tuple[str, ...]
    cert_pem: bytes  # the leaf, then any intermediates
    key_pem: bytes
    bundle_pem: bytes  # the trust bundle: one or more CAs (from the Workload API, federated ones too)
    not_after: datetime.datetime
    # From the Workload API where it federates: its own trust domain's CAs alone, and each
    # federated trust domain's (a folder's ca.crt is its own trust domain's only).
    own_bundle_pem: bytes = b""
    federated_pems: tuple[tuple[str, bytes], ...] = ()

    @property
    def own_bundle(self) -> bytes:
        """The CAs of this identity's own trust domain: those that may vouch for its IDs."""
        return self.own_bundle_pem or self.bundle_pem

    @property
    def fingerprint(self) -> str:
        """Of the certificate, key and bundle together: changes with any of them."""
        return hashlib.sha256(self.cert_pem + self.key_pem + self.bundle_pem).hexdigest()[:16]


def _read(folder: Path, name: str) -> bytes:
    try:
        return (folder / name).read_bytes()
    except FileNotFoundError:
        raise IdentityError(
            f"{folder}: {name} is missing (an identity folder holds tls.crt, tls.key and ca.crt,"
            " as a Kubernetes TLS Secret)"
        ) from None
    except OSError as exc:
        raise IdentityError(f"{folder / name}: {exc.strerror}") from None


def _check_key(path: str, key: object) -> None:
    if isinstance(key, rsa.RSAPrivateKey):
        raise IdentityError(
            f"{path} is an RSA key; identities here are EC P-256 (path tokens are ES256). With cert-manager set"
            " the Certificate's privateKey.algorithm: ECDSA and privateKey.size: 256; with SPIRE use its default"
            " ec-p256 key type"
        )
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise IdentityError(f"{path}: the key must be EC P-256 (secp256r1)")


def load(folder: Path, *, server: bool) -> Svid:
    """The identity in FOLDER, checked: one SPIFFE ID as the URI SAN, an EC P-256 key that
    belongs to the certificate, a certificate signed by a CA of the bundle and valid now;
    with SERVER, also a DNS SAN (grpcio's clients check server certificates by DNS name)."""
    cert_pem, key_pem, bundle_pem = _read(folder, TLS_CERT), _read(folder, TLS_KEY), _read(folder, TLS_CA)
    names = Sources(str(folder / TLS_CERT), str(folder / TLS_KEY), TLS_CA, str(folder))
    return parse(cert_pem, key_pem, bundle_pem, server=server, names=names)


@dataclass(frozen=True)
class Sources:
    """What the errors call the certificate, the key, the bundle and the whole."""

    cert: str
    key: str
    bundle: str
    whole: str
    cert_name: str = TLS_CERT
    key_name: str = TLS_KEY


def parse(cert_pem: bytes, key_pem: bytes, bundle_pem: bytes, *, server: bool, names: Sources) -> Svid:
    """An identity from PEM bytes, checked as `load` does (NAMES say where each came from)."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise IdentityError(f"{names.cert}: not a PEM certificate ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{names.key}: not an unencrypted PEM private key ({exc})") from None
    try:
        cas = x509.load_pem_x509_certificates(bundle_pem)
    except ValueError as exc:
        raise IdentityError(f"{names.bundle}: not PEM certificates ({exc})") from None
    _check_key(names.key, key)
    leaf = chain[0]
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    if leaf.public_key() != key.public_key():
        raise IdentityError(f"{names.whole}: {names.key_name} is not the key of {names.cert_name}")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise IdentityError(
            f"{names.cert}: an X.509 SVID has exactly one URI SAN, its SPIFFE ID; this one has {len(uris)}"
        )
    try:
        sid = SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise IdentityError(f"{names.cert}: {exc}") from None
    dns = tuple(san.get_values_for_type(x509.DNSName))
    if server and not dns:
        raise IdentityError(
            f"{names.cert} has no DNS SAN, and a server's certificate needs one: grpcio's clients verify"
            f" servers by DNS name, not by SPIFFE ID. Add {sid.dns_name()} (`nsmctl certs issue` does; with"
            " SPIRE, give the registration entry that DNS name; with cert-manager, list it in dnsNames)"
        )
    now = datetime.datetime.now(datetime.UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise IdentityError(
            f"{names.cert} is valid from {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} to"
            f" {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now"
        )
    if not _signed_by_bundle(chain, cas):
        raise IdentityError(f"{names.cert} is not signed by any CA in {names.bundle}")
    return Svid(sid, dns, cert_pem, key_pem, bundle_pem, leaf.not_valid_after_utc)


def _signed_by_bundle(chain: list[x509.Certificate], cas: list[x509.Certificate]) -> bool:
    """The chain's last certificate was issued by a CA of the bundle, and each link of the
    chain by the next one. (Checked at start, to fail with a clear message; the TLS
    handshake checks it again on every connection.)"""
    for child, parent in itertools.pairwise(chain):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            return False
    top = chain[-1]
    for ca in cas:
        try:
            top.verify_directly_issued_by(ca)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False
