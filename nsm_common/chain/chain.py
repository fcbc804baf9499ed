"""The chain every Request and Close runs through.

Each step sees the Request on the way in and the Connection on the way out,
calls the rest of the chain through `nxt`, and undoes its own work on Close.
Steps keep their own per-connection state, keyed by this hop's connection id.

A chain is generic in what its steps hand each other about one call: `Call`
holds what the shared steps (Begin) set, and a program's chain may use a
subclass that adds its own (the agent's `AgentCall`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest


@dataclass
class Call:
    """What the shared steps learn about one Request or Close and hand to later steps."""

    # Begin: the connection id is known here (a refresh or an update in place).
    refresh: bool = False
    # Begin: closing the old path of a reselect; a dead peer must not hold up the new one.
    reselecting: bool = False
    # Begin: endpoints to try last (the one a reselect moves away from).
    avoid: set[str] = field(default_factory=set)
    # Set when a program carries on a journalled connection after a restart:
    # says whether it is still wanted (its client may have closed it meanwhile).
    replay: Callable[[], bool] | None = None


CallT = TypeVar("CallT", bound=Call)


class Next(Generic[CallT]):
    """The rest of the chain after one step."""

    def __init__(self, steps: Sequence[Step[CallT]], position: int, new_call: Callable[[], CallT]) -> None:
        self._steps = steps
        self._position = position
        self._new_call = new_call

    def new_call(self, *, reselecting: bool = False) -> CallT:
        """A fresh call of this chain's kind, for a step that starts a Close by itself (expiry, reselect)."""
        call = self._new_call()
        call.reselecting = reselecting
        return call

    async def request(self, request: NetworkServiceRequest, call: CallT) -> Connection:
        if self._position >= len(self._steps):
            return request.connection
        step = self._steps[self._position]
        return await step.request(request, call, Next(self._steps, self._position + 1, self._new_call))

    async def close(self, conn: Connection, call: CallT) -> None:
        if self._position >= len(self._steps):
            return
        step = self._steps[self._position]
        await step.close(conn, call, Next(self._steps, self._position + 1, self._new_call))


class Step(Generic[CallT]):
    """A step that passes everything on; subclasses override what they own."""

    async def request(self, request: NetworkServiceRequest, call: CallT, nxt: Next[CallT]) -> Connection:
        return await nxt.request(request, call)

    async def close(self, conn: Connection, call: CallT, nxt: Next[CallT]) -> None:
        await nxt.close(conn, call)


class Chain(Generic[CallT]):
    """Steps in order; `new_call` makes the per-call state a Request or Close starts with."""

    def __init__(self, steps: Sequence[Step[CallT]], new_call: Callable[[], CallT]) -> None:
        self.steps = list(steps)
        self.new_call = new_call

    async def request(self, request: NetworkServiceRequest, call: CallT | None = None) -> Connection:
        return await Next(self.steps, 0, self.new_call).request(request, call or self.new_call())

    async def close(self, conn: Connection) -> None:
        await Next(self.steps, 0, self.new_call).close(conn, self.new_call())
