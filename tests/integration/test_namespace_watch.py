"""Namespace annotations through lightkube against a server speaking the Kubernetes
list/watch protocol (real HTTP, JSON lines, a 410 Gone). Not covered: a real API server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lightkube import Client
from lightkube.config.kubeconfig import KubeConfig

from nsm_k8s.namespaces import NamespaceAnnotations
from testbed.bed import free_port

A = "networkservicemesh.io"


def ns(name: str, rv: str, value: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "resourceVersion": rv}
    if value:
        meta["annotations"] = {A: value}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


class FakeApi(BaseHTTPRequestHandler):
    lists = 0
    done = threading.Event()

    def do_GET(self) -> None:
        if "watch=" not in self.path:
            FakeApi.lists += 1
            first = FakeApi.lists == 1
            items = (
                [ns("a", "5", "kernel://x"), ns("b", "6")]
                if first
                else [ns("b", "21", "kernel://y"), ns("c", "22", "kernel://z")]
            )
            body = json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "NamespaceList",
                    "metadata": {"resourceVersion": "10" if first else "30"},
                    "items": items,
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if "resourceVersion=10" in self.path:
            self.wfile.write(json.dumps({"type": "MODIFIED", "object": ns("b", "11", "kernel://y")}).encode() + b"\n")
            gone = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "code": 410,
                "reason": "Expired",
                "message": "too old",
            }
            self.wfile.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            self.wfile.flush()
            return
        FakeApi.done.set()
        time.sleep(5)  # an open, quiet watch


def test_list_watch_and_relist_after_410() -> None:
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), FakeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = KubeConfig.from_dict(
            {
                "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "test", "user": {"token": "t"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                "current-context": "test",
            }
        )
        client = Client(config)
        watcher = NamespaceAnnotations(client, retry=0.1).start()
        assert FakeApi.done.wait(10)
        time.sleep(0.2)
        assert watcher.lists == 2  # the 410 made it list again
        assert watcher.get("a") is None  # deleted during the gap: gone
        assert watcher.get("b") == "kernel://y" and watcher.get("c") == "kernel://z"
        watcher.stop()
    finally:
        server.shutdown()
