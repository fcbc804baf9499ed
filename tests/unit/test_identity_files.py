"""Identity folders: made by `nsmctl certs`, read and checked by `svid.load`, every
fault reported naming the file and the fix."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from nsm_client.cli import main as nsmctl
from nsm_common.identity import issue, svid


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    issue.init_ca(tmp_path / "ca", "example.org")
    return tmp_path / "ca"


def test_an_issued_identity_loads_as_server_and_client(ca: Path, tmp_path: Path) -> None:
    issue.issue(ca, "spiffe://example.org/node/n1", tmp_path / "n1")
    got = svid.load(tmp_path / "n1", server=True)
    assert str(got.spiffe_id) == "spiffe://example.org/node/n1"
    assert got.dns_names == ("n1.node.example.org",)
    assert (tmp_path / "n1" / "tls.key").stat().st_mode & 0o777 == 0o600
    assert (ca / "ca.key").stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(got.cert_pem)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_a_client_certificate_with_only_a_uri_san_loads_as_client_not_as_server(ca: Path, tmp_path: Path) -> None:
    issue.issue(ca, "spiffe://example.org/ns/default/sa/web", tmp_path / "w", dns_names=[])
    assert svid.load(tmp_path / "w", server=False).dns_names == ()
    with pytest.raises(svid.IdentityError, match=r"no DNS SAN.*Add web\.sa\.default\.ns\.example\.org"):
        svid.load(tmp_path / "w", server=True)


def test_an_rsa_key_is_refused_naming_cert_managers_setting(ca: Path, tmp_path: Path) -> None:
    issue.issue(ca, "spiffe://example.org/node/n1", tmp_path / "n1")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "n1" / "tls.key").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(svid.IdentityError, match=r"RSA key.*privateKey\.algorithm: ECDSA"):
        svid.load(tmp_path / "n1", server=True)


def test_a_key_of_another_certificate_is_refused(ca: Path, tmp_path: Path) -> None:
    issue.issue(ca, "spiffe://example.org/node/n1", tmp_path / "n1")
    issue.issue(ca, "spiffe://example.org/node/n2", tmp_path / "n2")
    (tmp_path / "n1" / "tls.key").write_bytes((tmp_path / "n2" / "tls.key").read_bytes())
    with pytest.raises(svid.IdentityError, match=r"tls\.key is not the key of tls\.crt"):
        svid.load(tmp_path / "n1", server=True)


def test_a_certificate_of_another_ca_is_refused(ca: Path, tmp_path: Path) -> None:
    issue.init_ca(tmp_path / "other", "example.org")
    issue.issue(tmp_path / "other", "spiffe://example.org/node/n1", tmp_path / "n1")
    (tmp_path / "n1" / "ca.crt").write_bytes((ca / "ca.crt").read_bytes())
    with pytest.raises(svid.IdentityError, match=r"not signed by any CA in ca\.crt"):
        svid.load(tmp_path / "n1", server=True)


def test_a_bundle_of_two_cas_serves_identities_of_either(ca: Path, tmp_path: Path) -> None:
    """A CA rotation: the bundle holds the old CA and the new one."""
    issue.init_ca(tmp_path / "new", "example.org")
    issue.issue(tmp_path / "new", "spiffe://example.org/node/n1", tmp_path / "n1")
    both = (ca / "ca.crt").read_bytes() + (tmp_path / "new" / "ca.crt").read_bytes()
    (tmp_path / "n1" / "ca.crt").write_bytes(both)
    assert len(x509.load_pem_x509_certificates(svid.load(tmp_path / "n1", server=True).bundle_pem)) == 2


def test_missing_files_and_no_uri_san_and_expiry_say_so(ca: Path, tmp_path: Path) -> None:
    with pytest.raises(svid.IdentityError, match=r"tls\.crt is missing"):
        svid.load(tmp_path, server=False)
    # A certificate without a SPIFFE ID, signed by the CA.
    ca_cert, ca_key = issue.load_ca(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)

    def write(not_after: datetime.datetime, uri: bool) -> Path:
        names: list[x509.GeneralName] = [x509.DNSName("n1.example.org")]
        if uri:
            names.append(x509.UniformResourceIdentifier("spiffe://example.org/node/n1"))
        cert = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=2)).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256())
        )  # fmt: skip
        out = tmp_path / f"c{int(uri)}{not_after.day}"
        out.mkdir()
        (out / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (out / "tls.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (out / "ca.crt").write_bytes((ca / "ca.crt").read_bytes())
        return out

    with pytest.raises(svid.IdentityError, match="exactly one URI SAN"):
        svid.load(write(now + datetime.timedelta(days=1), uri=False), server=True)
    with pytest.raises(svid.IdentityError, match="not now"):
        svid.load(write(now - datetime.timedelta(days=1), uri=True), server=True)


def test_nsmctl_certs_makes_both_and_names_the_bad_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def run(*argv: str) -> int:
        with pytest.raises(SystemExit) as done:
            nsmctl.main(list(argv))
        return int(done.value.code or 0)

    assert run("certs", "init", "--dir", str(tmp_path / "ca"), "--trust-domain", "example.org", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out)["trust_domain"] == "example.org"
    out = tmp_path / "reg"
    assert run("certs", "issue", "--ca", str(tmp_path / "ca"), "--id", "spiffe://example.org/registry",
               "--out", str(out)) == 0  # fmt: skip
    assert svid.load(out, server=True).dns_names == ("registry.example.org",)
    capsys.readouterr()
    cases = [
        (["init", "--dir", str(tmp_path / "ca"), "--trust-domain", "example.org"], "--dir: .* already holds a CA"),
        (["init", "--dir", str(tmp_path / "x"), "--trust-domain", "Bad Domain"], "--trust-domain: "),
        (["issue", "--ca", str(tmp_path / "ca"), "--id", "spiffe://other.org/x", "--out", str(tmp_path / "o")],
         "--id: .*not of trust domain example.org"),
        (["issue", "--ca", str(tmp_path / "nope"), "--id", "spiffe://example.org/x", "--out", str(tmp_path / "o")],
         "--ca: .*not a CA folder: ca.crt is missing"),
        (["issue", "--ca", str(tmp_path / "ca"), "--id", "example.org/x", "--out", str(tmp_path / "o")],
         "--id: .*starts with spiffe://"),
        (["issue", "--ca", str(tmp_path / "ca"), "--id", "spiffe://example.org/x", "--out", str(tmp_path / "o"),
          "--days", "0"], "--days: "),
    ]  # fmt: skip
    import re

    for argv, says in cases:
        assert run("certs", *argv) == 2, argv
        err = capsys.readouterr().err
        assert re.search("nsmctl: " + says, err), err
    assert not (tmp_path / "o").exists() and not (tmp_path / "x").exists()
