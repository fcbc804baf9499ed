"""The webhook's patch, as data: what the pod's containers get, and what they never get."""

from __future__ import annotations

import base64
import json
from typing import Any

from nsm_k8s.webhook import CLAIM_DIR, CLAIM_MOUNT, SOCKET_DIR, WebhookConfig, review


def patch_of(containers: list[dict[str, Any]], volumes: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    pod = {
        "metadata": {"name": "p", "namespace": "apps", "annotations": {"networkservicemesh.io": "kernel://web"}},
        "spec": {"containers": containers, **({"volumes": volumes} if volumes else {})},
    }
    body = {"kind": "AdmissionReview", "request": {"uid": "u", "kind": {"kind": "Pod"}, "object": pod}}
    out = review(json.dumps(body).encode(), WebhookConfig())
    return json.loads(base64.b64decode(out["response"]["patch"]))  # type: ignore[no-any-return]


def test_the_pod_gets_its_own_socket_folder_and_never_the_nodes() -> None:
    patch = patch_of([{"name": "app"}], volumes=[{"name": "data", "emptyDir": {}}])
    volumes = [op["value"] for op in patch if op["path"] == "/spec/volumes/-"]
    assert {"name": "nsm-socket", "emptyDir": {}} in volumes
    assert {"name": "nsm-claim", "hostPath": {"path": CLAIM_DIR, "type": "DirectoryOrCreate"}} in volumes
    assert not [v for v in volumes if v.get("hostPath", {}).get("path") == SOCKET_DIR]  # the node's socket: root's
    injected = [op["value"] for op in patch if op["path"] in ("/spec/initContainers/-", "/spec/containers/-")]
    assert [c["name"] for c in injected] == ["nsm-init", "nsm-client"]
    for container in injected:
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["NSM_CLAIM_SOCKET"] == f"{CLAIM_MOUNT}/claim.sock"
        assert env["NSM_CONNECT_TO"] == f"unix://{SOCKET_DIR}/nsm.io.sock"
        assert {"name": "nsm-socket", "mountPath": SOCKET_DIR} in container["volumeMounts"]  # it binds there
        assert {"name": "nsm-claim", "mountPath": CLAIM_MOUNT, "readOnly": True} in container["volumeMounts"]


def test_the_pods_containers_get_the_socket_read_only_where_nothing_is_mounted() -> None:
    containers: list[dict[str, Any]] = [
        {"name": "bare"},
        {"name": "mounts", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        {"name": "own", "volumeMounts": [{"name": "data", "mountPath": SOCKET_DIR}]},
    ]
    patch = patch_of(containers, volumes=[{"name": "data", "emptyDir": {}}])
    mount = {"name": "nsm-socket", "mountPath": SOCKET_DIR, "readOnly": True}
    ops = [
        (op["path"], op["value"])
        for op in patch
        if op["path"].startswith("/spec/containers/") and op["path"] != "/spec/containers/-"
    ]
    assert ops == [("/spec/containers/0/volumeMounts", [mount]), ("/spec/containers/1/volumeMounts/-", mount)]


def review_of(annotations: dict[str, str], config: WebhookConfig) -> dict[str, Any]:
    pod = {"metadata": {"name": "p", "namespace": "apps", "annotations": annotations}, "spec": {"containers": []}}
    body = {"kind": "AdmissionReview", "request": {"uid": "u", "kind": {"kind": "Pod"}, "object": pod}}
    return review(json.dumps(body).encode(), config)["response"]  # type: ignore[no-any-return]


def test_the_clients_get_the_location_labels_and_the_pods_awareness_groups() -> None:
    groups = "[kernel://a/nsm-1,kernel://b/nsm-2]"
    annotations = {"networkservicemesh.io": "kernel://a/nsm-1,kernel://b/nsm-2",
                   "networkservicemesh.io/awareness-groups": groups}  # fmt: skip
    response = review_of(annotations, WebhookConfig(cluster_name="east"))
    patch = json.loads(base64.b64decode(response["patch"]))
    for op in patch:
        if op["path"] in ("/spec/initContainers/-", "/spec/containers/-"):
            env = {e["name"]: e for e in op["value"]["env"]}
            assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
            assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
            assert env["CLUSTER_NAME"]["value"] == "east" and env["NSM_AWARENESS_GROUPS"]["value"] == groups


def test_bad_awareness_groups_refuse_the_pod_naming_the_problem() -> None:
    annotations = {"networkservicemesh.io": "kernel://a", "networkservicemesh.io/awareness-groups": "[kernel://a"}
    response = review_of(annotations, WebhookConfig())
    assert response["allowed"] is False and "NSM_AWARENESS_GROUPS: expected [URL" in response["status"]["message"]
