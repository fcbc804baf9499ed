"""Who owns a name, on upstream's wire (path tokens, `path` metadata), across two registry
replicas on one etcd and a restart: only the identity that registered a name may register it
again or unregister it, whichever replica it asks, whenever."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from testbed.bed import TRUST_DOMAIN, Testbed
from testbed.etcd import start_etcd

REPO = Path(__file__).resolve().parents[2]
REGISTRY_ID = f"spiffe://{TRUST_DOMAIN}/registry"
REGISTRY_NAME = "registry." + TRUST_DOMAIN
OWNED = "policy registry/registrant_owns_name.rego denies this"


def call(ns: str, port: int, what: str, identity: Path, name: str) -> dict[str, str]:
    """One registration or unregistration of NAME at the replica on PORT, as IDENTITY."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.helpers.tls_probe",
         "--target", f"127.0.0.1:{port}", "--call", what, "--server-name", REGISTRY_NAME,
         "--identity", str(identity), "--audience", REGISTRY_ID, "--name", name, "--record-name", name],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=True,
    )  # fmt: skip
    result: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_a_name_stays_its_owners_on_every_replica_and_after_a_restart(bed: Testbed) -> None:
    ns = bed.netns("own")
    etcd = start_etcd(bed, netns=ns)
    store = ["--store", etcd.url]
    first, _ = bed.registry(ns, port=5002, extra=store, name="registry-0")
    bed.registry(ns, port=5003, extra=store, name="registry-1")
    a = bed.identity(f"spiffe://{TRUST_DOMAIN}/node/node-a")
    b = bed.identity(f"spiffe://{TRUST_DOMAIN}/node/node-b")

    assert call(ns, 5002, "register", a, "ep-a")["code"] == "OK"
    for port in (5002, 5003):  # neither replica lets node-b take node-a's name
        for what in ("register", "unregister"):
            got = call(ns, port, what, b, "ep-a")
            assert got["code"] == "PERMISSION_DENIED", (port, what, got)
            assert OWNED in got["details"] and "node/node-a's" in got["details"], got

    first.stop()  # the owner is in etcd with the record, not in a replica's memory
    bed.registry(ns, port=5002, extra=store, name="registry-0")
    got = call(ns, 5002, "register", b, "ep-a")
    assert got["code"] == "PERMISSION_DENIED" and OWNED in got["details"], got
    assert call(ns, 5002, "register", a, "ep-a")["code"] == "OK"  # the owner refreshes
    assert call(ns, 5003, "unregister", a, "ep-a")["code"] == "OK"
    assert call(ns, 5003, "register", b, "ep-a")["code"] == "OK"  # free again: node-b's now
    got = call(ns, 5002, "unregister", a, "ep-a")
    assert got["code"] == "PERMISSION_DENIED" and "node/node-b's" in got["details"], got
