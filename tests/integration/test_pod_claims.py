"""A pod the webhook patched gets a socket of its own without anyone naming it: its injected
containers pass their namespace and their emptyDir to the agent's claim socket, the agent
binds the pod's socket in there, the pod's other containers reach it read-only, and after an
agent restart out of sight of that folder the sidecar claims it again. Claims that prove
nothing are refused, naming why, and leave nothing. The pod runs as a kubelet would run it
(tests/helpers/kubelet.py); the kubelet and the API server themselves are not covered."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import time
from pathlib import Path

from nsm_k8s.webhook import CLAIM_DIR, WebhookConfig, review
from testbed.bed import BIN, Proc, Testbed, links, ping, run
from testbed.mesh import one_node
from tests.helpers.kubelet import Pod, apply_patch

# A client of the pod's own containers, from upstream's definitions only: what it sees, and
# whether it may name another namespace.
APP_CLIENT = """
import json, sys
import grpc
from nsm_api import connection_pb2_grpc, networkservice_pb2_grpc
from nsm_api.connection_pb2 import MonitorScopeSelector
from nsm_api.networkservice_pb2 import NetworkServiceRequest
channel = grpc.insecure_channel("unix:///var/lib/networkservicemesh/nsm.io.sock")
first = next(connection_pb2_grpc.MonitorConnectionStub(channel).MonitorConnections(MonitorScopeSelector(), timeout=10))
request = NetworkServiceRequest()
request.connection.network_service = "web"
mechanism = request.mechanism_preferences.add(cls="LOCAL", type="KERNEL")
mechanism.parameters["inodeURL"] = sys.argv[1]
mechanism.parameters["name"] = "nsm-7"
try:
    networkservice_pb2_grpc.NetworkServiceStub(channel).Request(request, timeout=10)
    code = "OK"
except grpc.RpcError as exc:
    code = exc.code().name
print(json.dumps({"seen": sorted(first.connections), "request": code}))
"""


def admitted(annotation: str, name: str = "app-0") -> dict[str, object]:
    """The pod as the webhook's patch leaves it."""
    pod = {
        "metadata": {"name": name, "namespace": "apps", "annotations": {"networkservicemesh.io": annotation}},
        "spec": {"containers": [{"name": "app", "image": "busybox", "command": ["sleep", "3600"]}]},
    }
    body = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "u-1", "kind": {"kind": "Pod"}, "namespace": "apps", "object": pod},
    }
    out = review(json.dumps(body).encode(), WebhookConfig(image="nsm-py:test"))
    return apply_patch(pod, json.loads(base64.b64decode(out["response"]["patch"])))


def ours(argv: list[str]) -> list[str]:
    return [str(BIN / argv[0]), *argv[1:]]


def wait_output(proc: Proc, text: str, count: int = 1, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while proc.output().count(text) < count:
        assert time.monotonic() < deadline, proc.output()
        time.sleep(0.1)


def inode_url(netns: str) -> str:
    st = os.stat(f"/var/run/netns/{netns}")
    return f"inode://{st.st_dev}/{st.st_ino}"


def agent_fds(proc: Proc) -> dict[str, str]:
    folder = f"/proc/{proc.popen.pid}/fd"
    out = {}
    for fd in os.listdir(folder):
        try:
            out[fd] = os.readlink(f"{folder}/{fd}")
        except FileNotFoundError:
            continue
    return out


def test_a_patched_pod_claims_its_own_socket(bed: Testbed) -> None:
    claim_dir = bed.dir / "claim"
    args = ["--claim-socket", f"{claim_dir}/claim.sock"]
    mesh = one_node(bed, agent_args=args)
    bed.wait_for(mesh.agent_proc, "claim socket serving")
    assert stat.S_IMODE(os.stat(claim_dir / "claim.sock").st_mode) == 0o666
    bed.endpoint(bed.netns("ep"), "ep1", "web", "10.72.0.0/24", mesh.agent)
    pod = Pod(bed, admitted("kernel://web/nsm-1"), host_paths={CLAIM_DIR: str(claim_dir)})
    own = Path(pod.volumes["nsm-socket"]) / "nsm.io.sock"

    init_spec = pod.container("nsm-init", init=True)
    init = pod.run(init_spec, ours(init_spec["command"]))
    assert init.popen.wait(30) == 0, init.output()
    assert '"claimed"' in init.output() and links(pod.netns) == ["lo", "nsm-1"]
    assert stat.S_ISSOCK(os.stat(own).st_mode) and stat.S_IMODE(os.stat(own).st_mode) == 0o666
    connected = json.loads(next(line for line in init.output().splitlines() if '"connected"' in line))
    assert ping(pod.netns, connected["endpoint_ips"][0].split("/")[0])

    sidecar_spec = pod.container("nsm-client")
    sidecar = pod.run(sidecar_spec, ours(sidecar_spec["command"]))
    wait_output(sidecar, '"adopted"')
    assert '"claimed' not in sidecar.output()  # the init container's socket answers

    other = bed.netns("other")
    app = pod.container("app")
    assert {"name": "nsm-socket", "mountPath": "/var/lib/networkservicemesh", "readOnly": True} in app["volumeMounts"]

    def app_client() -> dict[str, object]:
        proc = pod.run(app, [str(BIN / "python"), "-c", APP_CLIENT, inode_url(other)])
        assert proc.popen.wait(30) == 0, proc.output()
        return json.loads(proc.output().strip().splitlines()[-1])  # type: ignore[no-any-return]

    seen = app_client()
    assert seen["request"] == "PERMISSION_DENIED" and len(seen["seen"]) == 1, seen  # type: ignore[arg-type]
    assert links(other) == ["lo"]

    # The agent restarts; the pod's folder is out of its sight (the pod's mount namespace),
    # so the sidecar claims the socket again, by itself.
    os.kill(mesh.agent_proc.popen.pid, signal.SIGKILL)
    mesh.agent_proc.popen.wait(5)
    proc, _ = bed.agent(mesh.node, "node1", mesh.registry, extra=args)
    bed.wait_for(proc, "claim socket serving")
    wait_output(sidecar, '"claimed again"')
    assert app_client()["seen"] == seen["seen"]

    # The pod goes: its connections close, its socket goes, the agent keeps no descriptor of it.
    sidecar.stop()
    assert links(pod.netns) == ["lo"], sidecar.output()[-3000:]
    bed.namespaces.remove(pod.netns)
    run("ip", "netns", "del", pod.netns)
    deadline = time.monotonic() + 10
    while os.path.exists(own) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(own)
    assert not [p for p in agent_fds(proc).values() if "nsm-socket" in p or "networkservicemesh" in p]


def test_claims_that_prove_nothing_are_refused(bed: Testbed) -> None:
    claim_socket = f"{bed.dir}/claim/claim.sock"
    mesh = one_node(bed, agent_args=["--claim-socket", claim_socket])
    bed.wait_for(mesh.agent_proc, "claim socket serving")
    bed.dir.chmod(0o711)  # so that a caller of another uid reaches the claim socket
    victim, evil = bed.netns("victim"), bed.netns("evil")
    folder = bed.dir / "evil-folder"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    closed = bed.dir / "closed-folder"
    closed.mkdir(mode=0o755)
    plain = bed.dir / "a-file"
    plain.write_text("x")

    def claim(*extra: str, netns: str = evil) -> dict[str, object]:
        res = run("ip", "netns", "exec", netns, str(BIN / "python"), "-m", "tests.helpers.claimant", claim_socket,
                  *extra)  # fmt: skip
        return json.loads(res.stdout.strip())  # type: ignore[no-any-return]

    before = agent_fds(mesh.agent_proc)
    refusals = {
        "the network namespace passed is not the caller's own": claim(
            "--netns", f"/var/run/netns/{victim}", "--folder", str(folder)
        ),
        "the first descriptor is not a network namespace": claim("--netns", str(plain), "--folder", str(folder)),
        "1 descriptors passed": claim(),
        "3 descriptors passed": claim("--folder", str(folder), "--extra", str(plain)),
        "the second descriptor is not a folder": claim("--folder", str(plain)),
        "the folder passed is not writable by uid 65534": claim("--folder", str(closed), "--uid", "65534"),
        "the claim is an empty JSON object": claim("--folder", str(folder), "--body", '{"netns": "/proc/1/ns/net"}'),
        "the agent's own network namespace": claim("--folder", str(folder), netns=mesh.node),
    }
    for why, answer in refusals.items():
        assert why in str(answer.get("error")), (why, answer)
    assert os.listdir(folder) == [] and os.listdir(closed) == []
    assert agent_fds(mesh.agent_proc).keys() == before.keys()  # every descriptor passed was closed

    # The same caller, proving what it asks: its socket, in its folder; asked again, replaced.
    assert claim("--folder", str(folder))["socket"] == "nsm.io.sock"
    assert claim("--folder", str(folder))["socket"] == "nsm.io.sock"
    assert os.listdir(folder) == ["nsm.io.sock"]
    res = bed.nsmctl("get", "connections", "--agent", f"unix://{folder}/nsm.io.sock")
    assert res.returncode == 0, res
    assert list(agent_fds(mesh.agent_proc).values()).count(str(folder)) == 1  # the old one's closed
