"""Interface names the kernel accepts, and names the agent chooses. Pure."""

from __future__ import annotations

import hashlib

IFNAMSIZ = 15  # bytes, without the terminating NUL


def ifname_problem(name: str) -> str | None:
    """Why the kernel (or we) would refuse `name` as an interface name, or None."""
    raw = name.encode()
    if not raw:
        return "interface name is empty"
    if len(raw) > IFNAMSIZ:
        return f"interface name {name!r} is {len(raw)} bytes long; the kernel allows at most {IFNAMSIZ}"
    if name in (".", "..") or ".." in name:
        return f"interface name {name!r} must not contain '..'"
    if "/" in name:
        return f"interface name {name!r} must not contain '/'"
    if any(c.isspace() for c in name) or ":" in name:
        return f"interface name {name!r} must not contain whitespace or ':'"
    if not name.isprintable():
        return f"interface name {name!r} must not contain control characters"
    return None


def chosen_ifname(connection_id: str, prefix: str = "nsm-") -> str:
    """A stable interface name for a connection, unique in practice (<= 15 bytes)."""
    return (prefix + hashlib.sha1(connection_id.encode()).hexdigest())[:IFNAMSIZ]


def wire_alias(agent: str, connection_id: str) -> str:
    """The interface alias that marks what an agent built for a connection (found again after a restart)."""
    return f"nsm:{agent}:{connection_id}"
