"""Endpoints that registered through this agent, and where they really listen.

The registry is told this agent's own URL for them (so every other agent knows
which node to ask); this map, kept in the state folder, says where the endpoint
itself is. It survives agent restarts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class LocalEndpoints:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "endpoints.json"
        self._urls: dict[str, str] = {}
        try:
            self._urls = dict(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            self._urls = {}

    def get(self, name: str) -> str | None:
        return self._urls.get(name)

    def put(self, name: str, url: str) -> None:
        if self._urls.get(name) != url:
            self._urls[name] = url
            self._save()

    def remove(self, name: str) -> None:
        if self._urls.pop(name, None) is not None:
            self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._urls, indent=1, sort_keys=True))
        os.replace(tmp, self.path)  # whole file or nothing, also on a crash
