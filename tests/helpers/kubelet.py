"""Run a pod as a kubelet would, as far as the webhook's patch matters: the admission patch
applied (JSONPatch `add`, all the webhook sends), the pod's own network namespace, an
emptyDir folder per such volume, and each container in a mount namespace of its own that
sees only its volumeMounts at their paths (read-only ones read-only) and a PID namespace
of its own. Not covered: the kubelet itself, images, cgroups, user namespaces."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

from testbed.bed import Proc, Testbed


def apply_patch(doc: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    """DOC with the JSONPatch `add` operations of PATCH applied (RFC 6902; others raise)."""
    out = copy.deepcopy(doc)
    for op in patch:
        if op["op"] != "add":
            raise ValueError(f"unexpected patch operation {op['op']}")
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node: Any = out
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node.append(op["value"]) if last == "-" else node.insert(int(last), op["value"])
        else:
            node[last] = op["value"]
    return out


class Pod:
    """One pod of the bed: its namespace, its volumes in the bed's folder."""

    def __init__(self, bed: Testbed, pod: dict[str, Any], host_paths: dict[str, str]) -> None:
        """HOST_PATHS: where each hostPath volume's path is on this machine (the bed's folder)."""
        self.bed = bed
        self.pod = pod
        name = pod["metadata"]["name"]
        self.netns = bed.netns(f"pod-{name}")
        self.volumes: dict[str, str] = {}
        for volume in pod["spec"].get("volumes", []):
            if "emptyDir" in volume:
                folder = bed.dir / f"pod-{name}-volumes" / volume["name"]
                folder.mkdir(parents=True, mode=0o777)
                folder.chmod(0o777)  # as the kubelet makes an emptyDir
                self.volumes[volume["name"]] = str(folder)
            elif "hostPath" in volume:
                self.volumes[volume["name"]] = host_paths[volume["hostPath"]["path"]]

    def container(self, name: str, init: bool = False) -> dict[str, Any]:
        key = "initContainers" if init else "containers"
        return next(c for c in self.pod["spec"][key] if c["name"] == name)

    def env(self, container: dict[str, Any]) -> dict[str, str]:
        fields = {
            "metadata.name": self.pod["metadata"]["name"],
            "metadata.namespace": self.pod["metadata"]["namespace"],
            "spec.nodeName": self.pod["spec"].get("nodeName", "node1"),
        }
        return {
            e["name"]: e["value"] if "value" in e else fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
            for e in container.get("env", [])
        }

    def run(self, container: dict[str, Any], command: list[str] | None = None) -> Proc:
        """Start CONTAINER (its command, or COMMAND) as the kubelet would."""
        lines = ["set -e"]
        covered: set[str] = set()
        for mount in container.get("volumeMounts", []):
            target = mount["mountPath"]
            parent = str(Path(target).parent)
            if parent not in covered:  # the host's files there stay out of sight
                lines.append(f"mount -t tmpfs pod-root {shlex.quote(parent)}")
                covered.add(parent)
            lines.append(f"mkdir -p {shlex.quote(target)}")
            lines.append(f"mount --bind {shlex.quote(self.volumes[mount['name']])} {shlex.quote(target)}")
            if mount.get("readOnly"):
                lines.append(f"mount -o remount,bind,ro {shlex.quote(target)}")
        lines.append('exec "$@"')
        argv = command or container["command"]
        shell = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc"]
        script = [*shell, "sh", "-c", "\n".join(lines), container["name"], *argv]
        return self.bed.start(
            f"{self.pod['metadata']['name']}-{container['name']}", script, self.netns, self.env(container)
        )
