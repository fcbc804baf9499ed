"""Namespace annotations from the API server, kept current by list-then-watch.

A watch that the server ends with 410 Gone (its resourceVersion compacted away)
lists again and replaces what it holds, so deletions in the gap are not missed;
other failures resume the watch from the last version seen.
"""

from __future__ import annotations

import threading
import time
from http import HTTPStatus

import httpx2 as httpx
import structlog
from lightkube import ApiError, Client
from lightkube.resources.core_v1 import Namespace

from nsm_k8s.annotation import ANNOTATION

log = structlog.get_logger("nsm.webhook")


class NamespaceAnnotations:
    """Each namespace's NSM annotation, kept current by a list-then-watch thread."""

    def __init__(self, client: Client, retry: float = 1.0) -> None:
        self.client = client
        self.retry = retry
        self._values: dict[str, str] = {}
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self.lists = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="namespace-watch", daemon=True)

    def start(self) -> NamespaceAnnotations:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def get(self, namespace: str) -> str | None:
        with self._lock:
            return self._values.get(namespace)

    def _apply(self, kind: str, ns: Namespace) -> None:
        name = ns.metadata.name if ns.metadata else None
        if not name:
            return
        value = (ns.metadata.annotations or {}).get(ANNOTATION) if ns.metadata else None
        with self._lock:
            if kind == "DELETED" or not value:
                self._values.pop(name, None)
            else:
                self._values[name] = value

    def _list(self) -> str:
        items = self.client.list(Namespace)
        fresh: dict[str, str] = {}
        for ns in items:
            value = (ns.metadata.annotations or {}).get(ANNOTATION) if ns.metadata else None
            if value and ns.metadata and ns.metadata.name:
                fresh[ns.metadata.name] = value
        with self._lock:
            self._values = fresh
        self.lists += 1
        self.ready.set()
        return str(items.resourceVersion)  # type: ignore[attr-defined]

    def _run(self) -> None:
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                for kind, ns in self.client.watch(Namespace, resource_version=version):
                    self._apply(kind, ns)
                    if ns.metadata and ns.metadata.resourceVersion:
                        version = ns.metadata.resourceVersion
                    if self._stop.is_set():
                        return
            except ApiError as exc:
                if exc.status.code == HTTPStatus.GONE:
                    log.info("namespace watch expired (410 Gone); listing again")
                    version = None
                    continue
                log.warning("namespace watch failed", error=str(exc))
            except httpx.HTTPError as exc:
                log.warning("namespace watch broke", error=str(exc))
            time.sleep(self.retry)
