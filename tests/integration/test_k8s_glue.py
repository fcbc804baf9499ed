"""The admission webhook over real HTTPS, and the pod client (`nsmctl pod`) in real namespaces.

Not covered here (no API server or kubelet on this machine): that Kubernetes calls
the webhook and runs the injected containers; these tests speak its wire protocol
(AdmissionReview v1 JSON over TLS) and run the containers' command in a pod namespace.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import signal
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nsm_k8s.webhook import WebhookConfig, serve
from testbed.bed import BIN, Testbed, free_port, links, run
from tests.helpers.mesh import ifindex, make_mesh


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "tls.crt", tmp / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def pod_review(annotations: dict[str, str] | None, namespace: str = "apps", kind: str = "Pod") -> dict[str, object]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "namespace": namespace,
            "object": {
                "metadata": {"name": "p", "namespace": namespace, "annotations": annotations or {}},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]},
            },
        },
    }


def test_webhook_over_https(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    namespaces = {"annotated": "kernel://from-namespace"}
    config = WebhookConfig(image="nsm-py:test", namespace_annotation=namespaces.get)
    server = serve("127.0.0.1", port, str(cert), str(key), config)
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False

    def post(body: bytes) -> tuple[int, dict[str, object]]:
        req = urllib.request.Request(f"https://127.0.0.1:{port}/mutate", data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=context, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    try:
        code, out = post(json.dumps(pod_review({"networkservicemesh.io": "kernel://web/nsm-1?app=a"})).encode())
        response = out["response"]
        assert code == 200 and response["allowed"] is True and response["uid"] == "u-1"  # type: ignore[index]
        patch = json.loads(base64.b64decode(response["patch"]))  # type: ignore[index]
        paths = [(p["op"], p["path"]) for p in patch]
        assert ("add", "/spec/initContainers/-") in paths and ("add", "/spec/containers/-") in paths
        assert ("add", "/spec/volumes/-") in paths
        init = next(p["value"] for p in patch if p["path"] == "/spec/initContainers/-")
        assert init["command"] == ["nsmctl", "pod", "--once"] and init["image"] == "nsm-py:test"
        env = {e["name"]: e.get("value") for e in init["env"]}
        assert env["NSM_NETWORK_SERVICES"] == "kernel://web/nsm-1?app=a"
        assert env["NSM_CONNECT_TO"].startswith("unix://")

        code, out = post(json.dumps(pod_review({"networkservicemesh.io": "kernel://Bad_Name"})).encode())
        assert code == 200 and out["response"]["allowed"] is False  # type: ignore[index]
        assert "DNS subdomain" in out["response"]["status"]["message"]  # type: ignore[index]

        for untouched in (pod_review(None), pod_review({"networkservicemesh.io": "kernel://web"}, "kube-system")):
            code, out = post(json.dumps(untouched).encode())
            assert code == 200 and out["response"]["allowed"] is True and "patch" not in out["response"]  # type: ignore[operator,index]

        code, out = post(json.dumps(pod_review(None, "annotated")).encode())
        patch = json.loads(base64.b64decode(out["response"]["patch"]))  # type: ignore[index]
        init = next(p["value"] for p in patch if p["path"] == "/spec/initContainers/-")
        assert {e["name"]: e.get("value") for e in init["env"]}["NSM_NETWORK_SERVICES"] == "kernel://from-namespace"

        assert post(b"{not json")[0] == 400
        assert post(json.dumps({"kind": "Something"}).encode())[0] == 400
        assert post(json.dumps(pod_review({}, kind="Service")).encode())[0] == 400
    finally:
        server.shutdown()


def test_webhook_cli_names_bad_flags(tmp_path: Path) -> None:
    res = run(str(BIN / "nsm-webhook"), "--listen", "tcp://127.0.0.1:1", "--tls-cert", str(tmp_path / "none"),
              check=False)  # fmt: skip
    assert res.returncode == 2 and "--tls-cert" in res.stderr


def test_pod_client_init_then_sidecar(bed: Testbed) -> None:
    """The injected containers' entry points, environment and socket, in the pod's
    network namespace and each under its own PID namespace, as a kubelet runs them."""
    mesh = make_mesh(bed)
    eps = {name: bed.endpoint(bed.netns(name), name, "svc", cidr, mesh.agent)[0]
           for name, cidr in (("ep1", "10.101.0.0/24"), ("ep2", "10.102.0.0/24"))}  # fmt: skip
    pod = bed.netns("app")
    env = {"NSM_NETWORK_SERVICES": "kernel://svc/nsm-1, kernel://svc?app=x", "NSM_POD_NAME": "app-0",
           "NSM_POD_NAMESPACE": "apps", "NSM_CONNECT_TO": mesh.agent}  # fmt: skip
    container = ["unshare", "--pid", "--fork", "--mount-proc", str(BIN / "nsmctl"), "pod"]
    init = bed.start("init", [*container, "--once"], netns=pod, env=env)
    assert init.popen.wait(30) == 0, init.output()
    assert sorted(links(pod)) == ["lo", "nsm-1", "nsm-2"]
    first = {
        json.loads(line)["interface"]: json.loads(line) for line in init.output().splitlines() if line.startswith("{")
    }
    before = {name: ifindex(pod, name) for name in ("nsm-1", "nsm-2")}
    sidecar = bed.start("sidecar", [*container, "--watch"], netns=pod, env=env)
    deadline = time.monotonic() + 20
    while sidecar.output().count('"adopted"') < 2:
        assert time.monotonic() < deadline, sidecar.output()
        time.sleep(0.1)
    adopted = [json.loads(line) for line in sidecar.output().splitlines() if '"adopted"' in line]
    assert {a["id"] for a in adopted} == {f["id"] for f in first.values()}  # the same connections
    assert {name: ifindex(pod, name) for name in ("nsm-1", "nsm-2")} == before  # adopted, not rebuilt
    # Heal: the endpoint serving nsm-1 dies; the sidecar moves nsm-1 to the other one.
    serving = first["nsm-1"]["endpoint"]
    os.kill(eps[str(serving)].popen.pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while '"healed' not in sidecar.output():
        assert time.monotonic() < deadline, sidecar.output()
        time.sleep(0.1)
    healed = [json.loads(line) for line in sidecar.output().splitlines() if '"healed' in line][-1]
    assert healed["interface"] in ("nsm-1", "nsm-2") and healed["endpoint"] != serving
    sidecar.stop()
    assert links(pod) == ["lo"]
