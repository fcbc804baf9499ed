"""Every manifest in daemonset/ against the Kubernetes schemas, offline
(kubernetes-validate ships them). The etcd overlay is validated as kustomize
would render its patch onto the base."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2] / "daemonset"
VERSION = "1.30.0"


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomization(folder: Path) -> dict[str, Any]:
    return docs(folder / "kustomization.yaml")[0]  # type: ignore[no-any-return]


def resources(folder: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for entry in kustomization(folder).get("resources", []):
        target = (folder / entry).resolve()
        out.extend(resources(target) if target.is_dir() else docs(target))
    return out


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge for what our patches use: maps merge, lists of named items merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else v
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        out_list = [copy.deepcopy(x) for x in base]
        for item in patch:
            match = next((i for i, x in enumerate(out_list) if x["name"] == item["name"]), None)
            if match is None:
                out_list.append(item)
            else:
                out_list[match] = merge(out_list[match], item)
        return out_list
    return patch


def rendered(folder: Path) -> list[dict[str, Any]]:
    items = resources(folder)
    for p in kustomization(folder).get("patches", []):
        for patch in docs(folder / p["path"]):
            for i, item in enumerate(items):
                if (item["kind"], item["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"]):
                    items[i] = merge(item, patch)
    return items


@pytest.mark.parametrize("overlay", ["base", "overlays/etcd"])
def test_every_manifest_is_valid(overlay: str) -> None:
    items = rendered(ROOT / overlay)
    assert items
    for item in items:
        kubernetes_validate.validate(item, VERSION, strict=True)


def test_what_the_product_needs_is_there() -> None:
    by_kind = {(i["kind"], i["metadata"]["name"]): i for i in rendered(ROOT / "base")}
    agent = by_kind[("DaemonSet", "nsm-agent")]["spec"]["template"]["spec"]
    assert agent["hostNetwork"] and agent["hostPID"]
    container = agent["containers"][0]
    assert container["securityContext"]["privileged"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/var/lib/networkservicemesh", "/var/lib/nsm", "/var/run/netns"} <= mounts
    assert container["livenessProbe"] and container["readinessProbe"] and agent["tolerations"]
    hook = by_kind[("MutatingWebhookConfiguration", "nsm-webhook")]["webhooks"][0]
    assert hook["clientConfig"]["service"]["path"] == "/mutate"
    etcd = {(i["kind"], i["metadata"]["name"]): i for i in rendered(ROOT / "overlays/etcd")}
    env = etcd[("Deployment", "nsm-registry")]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "NSM_STORE", "value": "etcd://nsm-etcd.nsm-system.svc.cluster.local:2379"} in env
    assert etcd[("Deployment", "nsm-registry")]["spec"]["replicas"] == 3
