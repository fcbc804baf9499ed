"""A CA and the identities it signs, for the demo, the tests and small sites
(`nsmctl certs init` and `nsmctl certs issue`).

Keys are EC P-256: the path tokens signed with them are ES256. An identity's folder
has the layout of a Kubernetes TLS Secret as cert-manager writes it: `tls.crt`,
`tls.key`, `ca.crt`. A CA folder holds `ca.crt` and `ca.key`.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nsm_common.identity.spiffe_id import SpiffeId

CA_CERT, CA_KEY = "ca.crt", "ca.key"
TLS_CERT, TLS_KEY, TLS_CA = "tls.crt", "tls.key", "ca.crt"
DEFAULT_CA_DAYS = 3650
DEFAULT_DAYS = 90


class IssueError(ValueError):
    """A CA or identity that cannot be made, with why."""


class OtherTrustDomain(IssueError):
    """The SPIFFE ID asked for is not of the CA's trust domain."""


def _write(path: Path, data: bytes, mode: int) -> None:
    # Written under a temporary name and renamed: a reader (a server reloading its
    # identity) sees the old file or the new one, never half of one.
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(**allowed: bool) -> x509.KeyUsage:
    """KeyUsage with the uses named, every other one off."""
    uses = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
            "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")  # fmt: skip
    unknown = set(allowed) - set(uses)
    if unknown:
        raise TypeError(f"no such key usage: {', '.join(sorted(unknown))}")
    return x509.KeyUsage(**{use: allowed.get(use, False) for use in uses})


def init_ca(folder: Path, trust_domain: str, days: int = DEFAULT_CA_DAYS) -> x509.Certificate:
    """A self-signed CA for TRUST_DOMAIN in FOLDER (ca.crt, and ca.key mode 0600).
    An existing CA is never overwritten."""
    td = SpiffeId.of_trust_domain(trust_domain)
    if (folder / CA_KEY).exists() or (folder / CA_CERT).exists():
        raise IssueError(f"{folder} already holds a CA; remove it first to make a new one")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nsm-py"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"{td.trust_domain} CA")])  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True),
            critical=True,
        )
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(td))]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / CA_KEY, _key_pem(key), 0o600)
    _write(folder / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert


def load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise IssueError(f"{folder} is not a CA folder: {Path(exc.filename).name} is missing") from None
    except ValueError as exc:
        raise IssueError(f"{folder}: the CA cannot be read: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IssueError(f"{folder}/{CA_KEY} is not an EC key")
    return cert, key


def issue(
    ca_folder: Path,
    spiffe_id: str,
    out: Path,
    days: int = DEFAULT_DAYS,
    dns_names: list[str] | None = None,
) -> x509.Certificate:
    """An X.509 SVID for SPIFFE_ID signed by the CA in CA_FOLDER, written to OUT as
    tls.crt, tls.key (0600) and ca.crt. It carries the ID as its URI SAN and, for
    servers, DNS_NAMES (default: the name derived from the ID); it serves both as a
    server and as a client certificate."""
    sid = SpiffeId.parse(spiffe_id)
    ca_cert, ca_key = load_ca(ca_folder)
    for uri in _uris(ca_cert)[:1]:
        ca_domain = SpiffeId.parse(uri).trust_domain
        if ca_domain != sid.trust_domain:
            raise OtherTrustDomain(f"{spiffe_id} is not of trust domain {ca_domain}, the CA's")
    names = dns_names if dns_names is not None else [sid.dns_name()]
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(sid))]
    sans += [x509.DNSName(n) for n in names]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nsm-py")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_agreement=True),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    _write(out / TLS_KEY, _key_pem(key), 0o600)
    _write(out / TLS_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(out / TLS_CA, (ca_folder / CA_CERT).read_bytes(), 0o644)
    return cert


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))
