"""The chain every Request and Close runs through.

Each step sees the Request on the way in and the Connection on the way out,
calls the rest of the chain through `nxt`, and undoes its own work on Close.
Steps keep their own per-connection state, keyed by this hop's connection id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nsm_agent.netns.resolve import NetnsRef
from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_api.registry_pb2 import NetworkService, NetworkServiceEndpoint


@dataclass
class Call:
    """What steps learn about one Request or Close and hand to later steps."""

    refresh: bool = False
    # Closing the old path of a reselect: a dead peer must not hold up the new one.
    reselecting: bool = False
    # Endpoints to try last (the one a reselect moves away from).
    avoid: set[str] = field(default_factory=set)
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
    # Set when the agent carries on a journalled connection after a restart:
    # says whether it is still wanted (its client may have closed it meanwhile).
    replay: Callable[[], bool] | None = None
    # The journal held this connection as done before this Request: a wire
    # step without it in memory (this agent restarted) adopts what the kernel
    # still has instead of building anew.
    journalled: bool = False
    # Steps that reach outside the agent note where first (see journal.py).
    note: Callable[..., None] = field(default=lambda key, *values: None)


@dataclass
class Tunnel:
    """This node's end of an agreed tunnel to the other node."""

    type: str
    vni: int
    local_ip: str
    remote_ip: str
    port: int
    mtu: int


class Next:
    """The rest of the chain after one step."""

    def __init__(self, steps: Sequence[Step], position: int) -> None:
        self._steps = steps
        self._position = position

    async def request(self, request: NetworkServiceRequest, call: Call) -> Connection:
        if self._position >= len(self._steps):
            return request.connection
        step = self._steps[self._position]
        return await step.request(request, call, Next(self._steps, self._position + 1))

    async def close(self, conn: Connection, call: Call) -> None:
        if self._position >= len(self._steps):
            return
        step = self._steps[self._position]
        await step.close(conn, call, Next(self._steps, self._position + 1))


class Step:
    """A step that passes everything on; subclasses override what they own."""

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        return await nxt.request(request, call)

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        await nxt.close(conn, call)


class Chain:
    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)

    async def request(self, request: NetworkServiceRequest, call: Call | None = None) -> Connection:
        return await Next(self.steps, 0).request(request, call or Call())

    async def close(self, conn: Connection) -> None:
        await Next(self.steps, 0).close(conn, Call())
