"""How people name a namespace on the command line: `ip netns` name, path, or PID."""

from __future__ import annotations

import os


def netns_path(value: str) -> str:
    """`NAME` → /var/run/netns/NAME, `PID` → /proc/PID/ns/net, a path stays; must exist."""
    if not value:
        raise ValueError("network namespace is empty")
    if value.startswith("/"):
        path = value
    elif value.isdigit():
        path = f"/proc/{value}/ns/net"
    else:
        if "/" in value or value in (".", ".."):
            raise ValueError(f"{value!r} is not a namespace name")
        path = f"/var/run/netns/{value}"
    if not os.path.exists(path):
        raise ValueError(f"network namespace {value!r} does not exist ({path})")
    return path
