"""What the agent's steps learn about one Request or Close and hand to later steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nsm_agent.netns.resolve import NetnsRef
from nsm_api.connection_pb2 import Mechanism
from nsm_api.registry_pb2 import NetworkService, NetworkServiceEndpoint
from nsm_common.chain.chain import Call


@dataclass
class Tunnel:
    """This node's end of an agreed tunnel to the other node."""

    type: str
    vni: int
    local_ip: str
    remote_ip: str
    port: int
    mtu: int


def _no_note(key: str, *values: str) -> None:
    """Outside the journal's reach (a chain without it), notes go nowhere."""


@dataclass
class AgentCall(Call):
    """The shared steps' `Call`, and what the agent's own steps add to it."""

    client_mechanism: Mechanism | None = None
    client_ns: NetnsRef | None = None
    client_ifname: str = ""
    service: NetworkService | None = None
    candidates: list[NetworkServiceEndpoint] = field(default_factory=list)
    endpoint: NetworkServiceEndpoint | None = None
    # Where the chosen endpoint is reached: its own socket on this node, or
    # the agent of its node (remote).
    endpoint_url: str = ""
    endpoint_remote: bool = False
    # What this agent offers the next hop (REMOTE mechanisms for another agent).
    downstream_prefs: list[Mechanism] = field(default_factory=list)
    # Set when the caller is another agent: the REMOTE mechanism it offered,
    # and the tunnel this agent agreed to.
    remote_offer: Mechanism | None = None
    tunnel: Tunnel | None = None
    # The journal held this connection as done before this Request: a wire
    # step without it in memory (this agent restarted) adopts what the kernel
    # still has instead of building anew.
    journalled: bool = False
    # Steps that reach outside the agent note where first (see pipeline/journal.py).
    note: Callable[..., None] = field(default=_no_note)
