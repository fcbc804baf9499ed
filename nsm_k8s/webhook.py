"""`nsm-webhook`: the mutating admission webhook for pods that ask for network services.

POST /mutate with an `admission.k8s.io/v1` AdmissionReview of a Pod. A pod whose
annotation (`networkservicemesh.io`) is present and valid gets, by JSONPatch:
an init container that connects once, a sidecar that keeps the connections
(refresh and heal) and closes them when the pod goes, and the environment. The
pod never sees the node's socket: its injected containers get the agent's claim
socket (a host folder) and an emptyDir in which the agent binds the pod's own
socket when they claim it (nsm_agent/pods/claims.py); the pod's other containers
get that emptyDir read-only, so clients built from upstream's definitions find
the socket where upstream's look, confined to their pod. A malformed annotation
is refused with a message naming the problem; pods without one, and pods in
system namespaces, pass untouched. A body that is not JSON or not a pod review gets HTTP 400.

A namespace's annotation applies to its pods that have none of their own; the
webhook keeps namespace annotations current from the API server (namespaces.py)
when it runs in a cluster.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any

from pydantic import BaseModel, field_validator

from nsm_common import settings
from nsm_common.settings import Option
from nsm_common.urls import Address, parse_address
from nsm_k8s.annotation import ANNOTATION, AnnotationError, parse, parse_awareness_groups

# The pod's awareness groups (upstream's NSM_AWARENESS_GROUPS of its client), passed on to
# the client containers the webhook injects.
AWARENESS_ANNOTATION = "networkservicemesh.io/awareness-groups"

SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease", "nsm-system"})
SOCKET_DIR = "/var/lib/networkservicemesh"  # in the pod: its own socket's emptyDir
CLAIM_DIR = "/var/lib/networkservicemesh/claim"  # on the host: the agent's claim socket
CLAIM_MOUNT = "/var/lib/networkservicemesh-claim"  # that folder in the injected containers


CLIENT_IMAGE = "nsm-py:latest"


@dataclass(frozen=True)
class WebhookConfig:
    image: str = CLIENT_IMAGE
    socket_dir: str = SOCKET_DIR
    claim_dir: str = CLAIM_DIR
    cluster_name: str = ""  # the clusterName label of the pods' Requests ("": none)
    # The annotation of a namespace (kept by a watch); a pod's own annotation wins.
    namespace_annotation: Callable[[str], str | None] = field(default=lambda namespace: None)


class BadReview(ValueError):
    pass


def _object(doc: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """DOC[KEY] as an object ({} when absent or null); BadReview (HTTP 400) when it is not one."""
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadReview(f"{where} is not an object")
    return value


def _text(doc: dict[str, Any], key: str, where: str) -> str:
    """DOC[KEY] as a string ("" when absent or null); BadReview when it is not one."""
    value = doc.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadReview(f"{where} is not a string")
    return value


def _container(name: str, config: WebhookConfig, args: list[str], value: str, groups: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "image": config.image,
        "command": ["nsmctl", "pod", *args],
        "env": [
            {"name": "NSM_CONNECT_TO", "value": f"unix://{config.socket_dir}/nsm.io.sock"},
            {"name": "NSM_CLAIM_SOCKET", "value": f"{CLAIM_MOUNT}/claim.sock"},
            {"name": "NSM_NETWORK_SERVICES", "value": value},
            {"name": "NSM_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NSM_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            # The location labels of every Request (nodeName, podName, clusterName).
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            *([{"name": "CLUSTER_NAME", "value": config.cluster_name}] if config.cluster_name else []),
            *([{"name": "NSM_AWARENESS_GROUPS", "value": groups}] if groups else []),
        ],
        "volumeMounts": [
            {"name": "nsm-socket", "mountPath": config.socket_dir},
            {"name": "nsm-claim", "mountPath": CLAIM_MOUNT, "readOnly": True},
        ],
        "securityContext": {"capabilities": {"add": ["NET_RAW"]}},
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "96Mi"}},
    }


def _app_mounts(spec: dict[str, Any], config: WebhookConfig) -> list[dict[str, Any]]:
    """The pod's own socket folder, read-only, in each of its containers that has nothing
    mounted there already."""
    patch: list[dict[str, Any]] = []
    mount = {"name": "nsm-socket", "mountPath": config.socket_dir, "readOnly": True}
    containers = spec.get("containers")
    for index, container in enumerate(containers if isinstance(containers, list) else []):
        mounts = container.get("volumeMounts") if isinstance(container, dict) else None
        if not isinstance(container, dict) or (mounts is not None and not isinstance(mounts, list)):
            continue  # the API server refuses such a pod anyway
        if any(isinstance(m, dict) and m.get("mountPath") == config.socket_dir for m in mounts or []):
            continue
        if mounts:
            patch.append({"op": "add", "path": f"/spec/containers/{index}/volumeMounts/-", "value": mount})
        else:
            patch.append({"op": "add", "path": f"/spec/containers/{index}/volumeMounts", "value": [mount]})
    return patch


def review(body: bytes, config: WebhookConfig) -> dict[str, Any]:
    """The AdmissionReview response for one request body (BadReview: HTTP 400)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadReview(f"the body is not JSON (or nested too deep): {exc}") from exc
    if not isinstance(doc, dict) or doc.get("kind") != "AdmissionReview" or not isinstance(doc.get("request"), dict):
        raise BadReview("expected an admission.k8s.io/v1 AdmissionReview with a request")
    request = doc["request"]
    kind = _object(request, "kind", "request.kind")
    pod = request.get("object")
    if kind.get("kind") != "Pod" or not isinstance(pod, dict):
        raise BadReview("this webhook reviews pods only")
    uid = _text(request, "uid", "request.uid")
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    out = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
    metadata = _object(pod, "metadata", "request.object.metadata")
    namespace = _text(request, "namespace", "request.namespace") or _text(metadata, "namespace", "metadata.namespace")
    namespace = namespace or "default"
    if namespace in SYSTEM_NAMESPACES:
        return out
    annotations = _object(metadata, "annotations", "metadata.annotations")
    value = _text(annotations, ANNOTATION, f"the annotation {ANNOTATION}") or config.namespace_annotation(namespace)
    if not value:
        return out
    groups = _text(annotations, AWARENESS_ANNOTATION, f"the annotation {AWARENESS_ANNOTATION}")
    try:
        parse(value)
        parse_awareness_groups(groups)
    except AnnotationError as exc:
        response["allowed"] = False
        response["status"] = {"code": HTTPStatus.BAD_REQUEST, "message": str(exc)}
        return out
    spec = _object(pod, "spec", "request.object.spec")
    patch: list[dict[str, Any]] = _app_mounts(spec, config)
    if not spec.get("initContainers"):
        patch.append({"op": "add", "path": "/spec/initContainers", "value": []})
    init = _container("nsm-init", config, ["--once"], value, groups)
    patch.append({"op": "add", "path": "/spec/initContainers/-", "value": init})
    sidecar = _container("nsm-client", config, ["--watch"], value, groups)
    patch.append({"op": "add", "path": "/spec/containers/-", "value": sidecar})
    if not spec.get("volumes"):
        patch.append({"op": "add", "path": "/spec/volumes", "value": []})
    patch.append({"op": "add", "path": "/spec/volumes/-", "value": {"name": "nsm-socket", "emptyDir": {}}})
    claim = {"name": "nsm-claim", "hostPath": {"path": config.claim_dir, "type": "DirectoryOrCreate"}}
    patch.append({"op": "add", "path": "/spec/volumes/-", "value": claim})
    response["patchType"] = "JSONPatch"
    response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return out


def make_handler(config: WebhookConfig) -> type[BaseHTTPRequestHandler]:
    """The HTTP handler class serving AdmissionReviews on /mutate and liveness on /healthz."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            if self.path.split("?")[0] != "/mutate":
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path}; reviews go to /mutate"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self._send(HTTPStatus.BAD_REQUEST, {"error": "Content-Length is not a number"})
                return
            if length < 0 or length > 4 << 20:
                self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "review larger than 4 MiB"})
                return
            try:
                self._send(HTTPStatus.OK, review(self.rfile.read(length), config))
            except BadReview as exc:
                self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})

        def do_GET(self) -> None:  # liveness and readiness
            self._send(
                HTTPStatus.OK if self.path == "/healthz" else HTTPStatus.NOT_FOUND, {"ok": self.path == "/healthz"}
            )

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write("webhook: " + format % args + "\n")

    return Handler


def serve(host: str, port: int, cert: str, key: str, config: WebhookConfig) -> ThreadingHTTPServer:
    """HTTPS on host:port in a thread of its own; returns the server (shutdown() stops it)."""
    server = ThreadingHTTPServer((host, port), make_handler(config))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class WebhookSettings(BaseModel):
    """Every setting of `nsm-webhook`, with its flag, environment name and default (stated only here)."""

    listen: Annotated[Address, Option("NSM_LISTEN_ON", "where to serve HTTPS, `tcp://HOST:PORT`", metavar="URL")] = (
        parse_address("tcp://0.0.0.0:8443")
    )
    tls_cert: Annotated[str, Option("NSM_TLS_CERT", "PEM certificate file", metavar="FILE")] = ""
    tls_key: Annotated[str, Option("NSM_TLS_KEY", "PEM key file", metavar="FILE")] = ""
    image: Annotated[str, Option("NSM_CLIENT_IMAGE", "image of the injected client containers")] = CLIENT_IMAGE
    cluster_name: Annotated[
        str, Option("NSM_CLUSTER_NAME", "the clusterName label the injected clients put on their Requests")
    ] = ""

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, value: object) -> object:
        addr = parse_address(value) if isinstance(value, str) else value
        if isinstance(addr, Address) and addr.scheme != "tcp":
            raise ValueError("the webhook serves HTTPS on tcp://HOST:PORT")
        return addr

    @field_validator("tls_cert", "tls_key")
    @classmethod
    def _exists(cls, value: str) -> str:
        if not value or not os.path.exists(value):
            raise ValueError(f"{value or '(not given)'} does not exist")
        return value


def build_parser() -> argparse.ArgumentParser:
    """`nsm-webhook`'s flags, their defaults taken from the environment as it is now."""
    return settings.build_parser(WebhookSettings, "nsm-webhook", __doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> None:
    args = settings.parse(WebhookSettings, build_parser(), argv)
    addr = args.listen
    config = WebhookConfig(image=args.image, cluster_name=args.cluster_name)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):  # in a cluster: namespace annotations from the API
        from lightkube import Client

        from nsm_k8s.namespaces import NamespaceAnnotations

        watcher = NamespaceAnnotations(Client()).start()
        # Admit with namespace annotations known: the first list, or a while trying.
        if not watcher.ready.wait(timeout=10):
            print("nsm-webhook: namespaces not listed yet; serving, annotations on pods only", flush=True)
        config = WebhookConfig(image=args.image, cluster_name=args.cluster_name, namespace_annotation=watcher.get)
    server = serve(addr.host, addr.port, args.tls_cert, args.tls_key, config)
    print(f"nsm-webhook serving https://{addr.host}:{addr.port}/mutate", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
