"""Mutual TLS on every TCP hop, measured from the underlay as an outsider would try it
(tests/helpers/tls_probe.py: upstream's message definitions, grpcio's own credentials).

Covered: no certificate, a certificate of another CA, another trust domain, an identity of
the wrong role (a workload asking an agent for a REMOTE connection, an ID of no role
registering) are refused; an agent gets through; an agent or registry without an identity
refuses to listen on TCP unless --insecure (then a warning); a server certificate without
the DNS SAN, or with an RSA key, stops it at start with the fix named; rotating the
certificate and the CA keeps every connection, and new ones use the new certificate.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from nsm_client.runtime import kernel_request
from nsm_common.identity import issue
from nsm_common.identity.spiffe_id import SpiffeId
from testbed.bed import BIN, REPO, TRUST_DOMAIN, Testbed, ping
from testbed.cluster import Cluster
from tests.helpers.mesh import agent_client

NODE2 = "192.0.2.2:5001"
REGISTRY = "192.0.2.254:5002"


def dns(spiffe_id: str) -> str:
    return SpiffeId.parse(spiffe_id).dns_name()


AGENT2_ID = f"spiffe://{TRUST_DOMAIN}/node/node2"
AGENT2 = dns(AGENT2_ID)
REGISTRY_ID = f"spiffe://{TRUST_DOMAIN}/registry"
REGISTRY_NAME = dns(REGISTRY_ID)


def probe(cluster: Cluster, target: str, call: str, *how: str) -> dict[str, str]:
    """The probe's status from the underlay (the registry's namespace, on the nodes' bridge)."""
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            cluster.underlay_ns,
            sys.executable,
            "-m",
            "tests.helpers.tls_probe",
            "--target",
            target,
            "--call",
            call,
            *how,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    result: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture
def two(bed: Testbed) -> Cluster:
    cluster = Cluster.build(bed, nodes=2)
    bed.endpoint(cluster.pod(cluster.nodes[1], "ep"), "ep1", "svc", "10.81.0.0/24", cluster.nodes[1].agent)
    return cluster


def test_only_identities_of_the_right_role_get_in(bed: Testbed, two: Cluster, tmp_path: Path) -> None:
    ca = str(bed.dir / "pki" / "ca" / "ca.crt")
    issue.init_ca(tmp_path / "rogue-ca", TRUST_DOMAIN)
    rogue = tmp_path / "rogue"
    issue.issue(tmp_path / "rogue-ca", f"spiffe://{TRUST_DOMAIN}/node/node1", rogue)
    outsiders = {"plaintext": ["--plaintext"], "no certificate": ["--ca", ca], "another CA": ["--identity", str(rogue)]}
    for target, name, call in ((NODE2, AGENT2, "request"), (REGISTRY, REGISTRY_NAME, "register"),
                               (REGISTRY, REGISTRY_NAME, "unregister")):  # fmt: skip
        for who, how in outsiders.items():
            got = probe(two, target, call, "--server-name", name, *how)
            assert got["code"] == "UNAVAILABLE", (target, call, who, got)

    workload = str(bed.identity(f"spiffe://{TRUST_DOMAIN}/ns/default/sa/web"))
    got = probe(two, NODE2, "request", "--server-name", AGENT2, "--identity", workload)
    assert got["code"] == "PERMISSION_DENIED", got
    assert "is a workload; only agents may" in got["details"], got

    nobody = str(bed.identity(f"spiffe://{TRUST_DOMAIN}/tools/scanner"))
    for call in ("register", "unregister"):
        got = probe(two, REGISTRY, call, "--server-name", REGISTRY_NAME, "--identity", nobody)
        assert got["code"] == "PERMISSION_DENIED" and "is of no role" in got["details"], got

    # The right identities get through: an agent reaches node2's chain (nothing to serve a
    # made-up service), a workload may unregister (a name nobody holds).
    agent1 = str(bed.identity(f"spiffe://{TRUST_DOMAIN}/node/node1"))
    probe_request = ["--server-name", AGENT2, "--identity", agent1, "--service", "made-up", "--audience", AGENT2_ID]
    assert probe(two, NODE2, "request", *probe_request)["code"] == "NOT_FOUND"
    as_workload = ["--server-name", REGISTRY_NAME, "--identity", workload, "--audience", REGISTRY_ID]
    got = probe(two, REGISTRY, "unregister", *as_workload, "--name", "x")
    assert got["code"] == "OK", got
    # ep1 is node2's (its agent registered it): nobody else takes it over or unregisters it.
    for call in ("register", "unregister"):
        got = probe(two, REGISTRY, call, *as_workload, "--name", "ep1", "--record-name", "ep1")
        assert got["code"] == "PERMISSION_DENIED", (call, got)
        assert "policy registry/registrant_owns_name.rego denies this" in got["details"], got
        assert f"(the name is spiffe://{TRUST_DOMAIN}/node/node2's)" in got["details"], got
    listed = bed.nsmctl("get", "endpoints", "--agent", two.registry).stdout
    assert "ep1" in listed and "rogue" not in listed


def test_a_bad_path_token_is_refused_naming_the_rule(bed: Testbed, two: Cluster) -> None:
    """Upstream's wire (tests/helpers/tls_probe.py signs with PyJWT): each bad token is refused
    by the policy that catches it; the good one reaches the chain."""
    agent1 = str(bed.identity(f"spiffe://{TRUST_DOMAIN}/node/node1"))
    agent3 = str(bed.identity(f"spiffe://{TRUST_DOMAIN}/node/node3"))
    how = ["--server-name", AGENT2, "--identity", agent1, "--service", "made-up", "--audience", AGENT2_ID]
    caught_by = {
        "none": "common/tokens_valid.rego",  # and the message says no token was sent
        "forged": "server/prev_token_signed.rego",  # our claims, another key
        "edited": "server/prev_token_signed.rego",  # signed, then exp changed
        "expired": "common/tokens_expired.rego",
        "unchained": "common/tokens_chained.rego",  # aud is not node2
        "foreign": "server/prev_token_signed.rego",  # node3's own valid token, presented by node1
    }
    for kind, policy in caught_by.items():
        got = probe(two, NODE2, "request", *how, "--token", kind, "--foreign", agent3)
        assert got["code"] == "PERMISSION_DENIED", (kind, got)
        assert f"policy {policy} denies this" in got["details"], (kind, got)
        assert f"spiffe://{TRUST_DOMAIN}/node/node1" in got["details"], (kind, got)
    assert "sent no nsm-client-token" in probe(two, NODE2, "request", *how, "--token", "none")["details"]
    assert probe(two, NODE2, "request", *how, "--token", "signed")["code"] == "NOT_FOUND"


def test_another_trust_domain_is_refused_even_when_its_ca_is_trusted(
    bed: Testbed, two: Cluster, tmp_path: Path
) -> None:
    issue.init_ca(tmp_path / "evil-ca", "evil.test")
    evil = tmp_path / "evil"
    issue.issue(tmp_path / "evil-ca", "spiffe://evil.test/node/node1", evil)
    how = ["--server-name", AGENT2, "--identity", str(evil)]
    assert probe(two, NODE2, "request", *how)["code"] == "UNAVAILABLE"
    # node2 trusts the other CA too (a federation's bundle): its handshake passes, its ID does not.
    folder = bed.identity(f"spiffe://{TRUST_DOMAIN}/node/node2")
    bundle = (folder / "ca.crt").read_bytes() + (tmp_path / "evil-ca" / "ca.crt").read_bytes()
    (folder / "ca.crt").write_bytes(bundle)
    # The evil client must trust node2's CA as well to get that far.
    (evil / "ca.crt").write_bytes(bundle)
    time.sleep(1.2)  # the identity folder is looked at again at most every second
    got = probe(two, NODE2, "request", *how)
    assert got["code"] == "PERMISSION_DENIED", got
    assert "is of trust domain evil.test, not nsm.test" in got["details"], got


def start(bed: Testbed, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    """nsm-agent in NS with ARGS, until it exits or serves (then it is stopped)."""
    state = bed.dir / f"state-{time.monotonic_ns()}"
    argv = ["ip", "netns", "exec", ns, str(BIN / "nsm-agent"), "--state-dir", str(state), "--name", "lone", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    return subprocess.CompletedProcess(argv, proc.returncode, out, "")


def rsa_identity(ca: Path, out: Path) -> None:
    """An SVID as cert-manager writes it with its default key algorithm (RSA)."""
    ca_cert = x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((ca / "ca.key").read_bytes(), None)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    at = datetime.datetime.now(datetime.UTC)
    sid = f"spiffe://{TRUST_DOMAIN}/node/lone"
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(at - datetime.timedelta(minutes=1)).not_valid_after(at + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(sid),
                                                    x509.DNSName(dns(sid))]), critical=True)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )  # fmt: skip
    out.mkdir()
    (out / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (out / "ca.crt").write_bytes((ca / "ca.crt").read_bytes())


def test_a_tcp_listener_needs_an_identity_or_insecure_and_a_server_identity_fit_to_serve(
    bed: Testbed, tmp_path: Path
) -> None:
    ns = bed.netns("lone")
    reg = f"unix://{bed.dir}/none.sock"
    tcp = ["--listen", f"unix://{bed.dir}/lone.sock", "--listen", "tcp://127.0.0.1:5001", "--registry", reg]
    refused = start(bed, ns, *tcp)
    assert refused.returncode != 0
    assert "listening on tcp://127.0.0.1:5001 needs an identity: --identity DIR" in refused.stdout, refused.stdout

    plaintext = start(bed, ns, *tcp, "--insecure")
    assert "agent serving" in plaintext.stdout, plaintext.stdout
    assert "speaks plaintext gRPC over TCP (--insecure)" in plaintext.stdout

    ca = bed.dir / "pki" / "ca"
    bed.identity(f"spiffe://{TRUST_DOMAIN}/registry")  # makes the CA
    issue.issue(ca, f"spiffe://{TRUST_DOMAIN}/node/lone", tmp_path / "no-dns", dns_names=[])
    no_dns = start(bed, ns, *tcp, "--identity", str(tmp_path / "no-dns"))
    assert no_dns.returncode != 0 and "DNS" in no_dns.stdout, no_dns.stdout
    rsa_identity(ca, tmp_path / "rsa")
    with_rsa = start(bed, ns, *tcp, "--identity", str(tmp_path / "rsa"))
    assert with_rsa.returncode != 0 and "privateKey.algorithm: ECDSA" in with_rsa.stdout, with_rsa.stdout


def test_rotating_certificates_and_the_ca_keeps_every_connection(bed: Testbed, two: Cluster, tmp_path: Path) -> None:
    node1, _node2 = two.nodes
    client = agent_client(node1.agent)
    pod = two.pod(node1, "c1")
    conn = client.request(kernel_request(f"/var/run/netns/{pod}", "svc", "nsm-1"))
    peer = conn.context.ip_context.dst_ip_addrs[0].split("/")[0]
    assert conn.path.path_segments[2].name == "node2" and ping(pod, peer)

    # CA rotation: a second CA, trusted everywhere first; then node2 and the registry get
    # certificates of the new CA.
    new_ca = tmp_path / "new-ca"
    issue.init_ca(new_ca, TRUST_DOMAIN)
    old_bundle = (bed.dir / "pki" / "ca" / "ca.crt").read_bytes()
    bundle = old_bundle + (new_ca / "ca.crt").read_bytes()
    for folder in (bed.dir / "pki").iterdir():
        if (folder / "ca.crt").exists() and folder.name != "ca":
            (folder / "ca.crt").write_bytes(bundle)
    time.sleep(1.2)
    for sid in (f"spiffe://{TRUST_DOMAIN}/node/node2", f"spiffe://{TRUST_DOMAIN}/registry"):
        folder = bed.identity(sid)
        issue.issue(new_ca, sid, tmp_path / "next", days=2)
        for name in ("tls.key", "tls.crt"):  # what a Secret update does, file by file
            (folder / name).write_bytes((tmp_path / "next" / name).read_bytes())
        (folder / "ca.crt").write_bytes(bundle)
        for name in ("tls.key", "tls.crt", "ca.crt"):
            (tmp_path / "next" / name).unlink()
        (tmp_path / "next").rmdir()
    time.sleep(1.2)

    # node2 now serves the new CA's certificate: a client trusting only the new CA gets in.
    only_new = tmp_path / "only-new"
    issue.issue(new_ca, f"spiffe://{TRUST_DOMAIN}/node/node1", only_new)
    got = probe(two, NODE2, "request", "--server-name", AGENT2, "--identity", str(only_new), "--service", "made-up",
                "--audience", AGENT2_ID)  # fmt: skip
    assert got["code"] == "NOT_FOUND", got
    # The connection made before stays, and is refreshed over the rotated hop; a new one is made.
    assert ping(pod, peer)
    refresh = kernel_request(f"/var/run/netns/{pod}", "svc", "nsm-1")
    refresh.connection.CopyFrom(conn)
    refresh.connection.path.path_segments[0].expires.FromSeconds(int(time.time() + 600))
    again = client.request(refresh)
    assert again.id == conn.id and ping(pod, peer)
    pod2 = two.pod(node1, "c2")
    second = client.request(kernel_request(f"/var/run/netns/{pod2}", "svc", "nsm-1"))
    assert ping(pod2, second.context.ip_context.dst_ip_addrs[0].split("/")[0])
    client.close(second)
    client.close(again)
