"""Which tunnels a connection to another domain may use.

A connection whose service is `SERVICE@DOMAIN` crosses the public internet between the two
nodes: only WireGuard is offered and accepted there (IP payload inside it, and ETHERNET as
the VXLAN our WireGuard mechanism carries inside it), never bare VXLAN, which is neither
encrypted nor authenticated.
"""

from __future__ import annotations

from nsm_agent.decisions.tunnel import WIREGUARD
from nsm_api.connection_pb2 import Connection
from nsm_common.interdomain import is_remote

BETWEEN_DOMAINS = (WIREGUARD,)


def crosses_domains(conn: Connection) -> bool:
    """The connection is to a service of another domain (its name carries `@DOMAIN`)."""
    return is_remote(conn.network_service)


def offered_between_domains(offer: list[str]) -> list[str]:
    """The kinds of OFFER (in its order) that may cross to another domain."""
    return [kind for kind in offer if kind in BETWEEN_DOMAINS]


def refused_between_domains(kind: str) -> str | None:
    """Why a tunnel of KIND may not join two domains, or None when it may."""
    if kind in BETWEEN_DOMAINS:
        return None
    return f"mechanism {kind} between domains: only {', '.join(BETWEEN_DOMAINS)} crosses the internet (encrypted)"


def nothing_to_offer_between_domains(offer: list[str]) -> str:
    return (f"a connection to another domain needs {', '.join(BETWEEN_DOMAINS)}; this agent offers "
            f"{', '.join(offer) or 'nothing'} (--remote-mechanisms, and WireGuard on the node)")  # fmt: skip
