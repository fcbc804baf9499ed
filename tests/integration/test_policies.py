"""A site's own Rego policy on the agent (`--policy`): who may request which service, a
denial naming the policy, a change taken without a restart, a broken file refused while the
policy in force stays, an engine failure that denies, a broken file at start that stops it.

Clients here are upstream's kind: a workload SVID over the agent's TLS socket, its path
token signed and sent in metadata."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
import pytest

from nsm_api import networkservice_pb2_grpc
from nsm_api.connection_pb2 import Connection
from nsm_client.runtime import kernel_request
from nsm_common.chain.path_tokens import OutgoingTokens
from nsm_common.identity.spiffe_id import SpiffeId
from nsm_common.identity.tls import channel_credentials, channel_options
from testbed.bed import BIN, TRUST_DOMAIN, Testbed, links
from testbed.mesh import one_node

NODE = f"spiffe://{TRUST_DOMAIN}/node/node1"

ONLY_PROD = """package site

# Service "web" only for workloads of namespace prod; everything else as the defaults say.
default valid = false

valid { input.operation != "networkservice.request" }
valid { input.network_service != "web" }
valid { input.caller.namespace == "prod" }
"""

ALSO_DEFAULT = ONLY_PROD + 'valid { input.caller.namespace == "default" }\n'
BROKEN = "package site\n\nvalid { input.caller.namespace == \n"
FAILS = "package site\n\n# two values for one rule: the engine cannot answer\nvalid := x { x := {true, false}[_] }\n"


class Workload:
    """A workload on the agent's TLS socket, as upstream's clients dial it."""

    def __init__(self, bed: Testbed, socket: str, namespace: str) -> None:
        spiffe_id = f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/web"
        identity = bed.transport(spiffe_id).identity
        assert identity is not None
        self.channel = grpc.secure_channel(f"unix:{socket}", channel_credentials(identity.current()),
                                           options=channel_options(SpiffeId.parse(NODE)))  # fmt: skip
        self.stub = networkservice_pb2_grpc.NetworkServiceStub(self.channel)
        self.tokens = OutgoingTokens(identity)

    def request(self, pod: str, service: str = "web") -> Connection:
        req = kernel_request(f"/var/run/netns/{pod}", service, "nsm-1")
        metadata = self.tokens.sign_for(req.connection, NODE)
        reply: Connection = self.stub.Request(req, timeout=15, metadata=metadata)
        return reply

    def close(self, conn: Connection) -> None:
        self.stub.Close(conn, timeout=15, metadata=self.tokens.sign_for(conn, NODE))


def denial(fn: object) -> str:
    with pytest.raises(grpc.RpcError) as info:
        fn()  # type: ignore[operator]
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value
    return str(info.value.details())  # type: ignore[attr-defined]


def rewrite(policy: Path, text: str) -> None:
    """A new version of the file, and time for the agent's next look (once a second)."""
    policy.write_text(text)
    time.sleep(1.3)


def test_a_site_policy_says_who_may_use_a_service_and_changes_without_a_restart(bed: Testbed) -> None:
    policy = bed.dir / "policy" / "site.rego"
    policy.parent.mkdir()
    policy.write_text(ONLY_PROD)
    socket = f"{bed.dir}/tls/nsm.io.sock"
    mesh = one_node(bed, agent_args=["--tls-socket", socket, "--policy", str(policy.parent)])
    bed.endpoint(bed.netns("ep"), "ep1", "web", "10.72.0.0/24", mesh.agent)
    bed.endpoint(bed.netns("ep2"), "ep2", "db", "10.73.0.0/24", mesh.agent)
    pod = bed.netns("a")
    default, prod = Workload(bed, socket, "default"), Workload(bed, socket, "prod")

    why = denial(lambda: default.request(pod))
    assert f"by spiffe://{TRUST_DOMAIN}/ns/default/sa/web: policy {policy} denies this" in why, why
    assert links(pod) == ["lo"]  # nothing built for a denied Request
    prod.close(prod.request(pod))  # prod may; and a Close is not a Request
    default.close(default.request(pod, "db"))  # another service: as the defaults say

    rewrite(policy, ALSO_DEFAULT)  # taken without a restart
    conn = default.request(pod)
    default.close(conn)

    rewrite(policy, BROKEN)  # refused: the policy in force stays
    assert "policy refused; the policies in force stay" in mesh.agent_proc.output()
    assert "does not compile" in mesh.agent_proc.output()
    default.close(default.request(pod))

    rewrite(policy, FAILS)  # compiles, but the engine cannot answer: denied (fail closed)
    why = denial(lambda: prod.request(pod))
    assert f"policy {policy} (data.site.valid) could not be evaluated" in why and "denied" in why, why
    assert links(pod) == ["lo"]


def test_a_policy_that_does_not_compile_stops_the_agent_at_start(bed: Testbed) -> None:
    policy = bed.dir / "broken.rego"
    policy.write_text(BROKEN)
    res = subprocess.run([str(BIN / "nsm-agent"), "--policy", str(policy), "--state-dir", str(bed.dir / "st")],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert res.returncode != 0
    assert f"nsm-agent: --policy (env NSM_POLICY): policy {policy} does not compile" in res.stderr, res.stderr
    assert not (bed.dir / "st" / "journal").exists()
    res = subprocess.run([str(BIN / "nsm-agent"), "--policy", str(bed.dir / "missing.rego")],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert res.returncode != 0 and "no such file or folder" in res.stderr, res.stderr
