"""Names the agent chooses for the interfaces and marks it makes. Pure."""

from __future__ import annotations

import hashlib

from nsm_common.names import IFNAMSIZ


def chosen_ifname(connection_id: str, prefix: str = "nsm-") -> str:
    """A stable interface name for a connection, unique in practice (<= 15 bytes)."""
    return (prefix + hashlib.sha1(connection_id.encode()).hexdigest())[:IFNAMSIZ]


def wire_alias(agent: str, connection_id: str) -> str:
    """The interface alias that marks what an agent built for a connection (found again after a restart)."""
    return f"nsm:{agent}:{connection_id}"
