"""The chain every Request and Close runs through.

Each step sees the Request on the way in and the Connection on the way out,
calls the rest of the chain through `nxt`, and undoes its own work on Close.
Steps keep their own per-connection state, keyed by this hop's connection id.

What one step learns about a call and later steps need travels in `Call`: the
shared steps' few fields, and records that a step owns. A step puts its record
on the way in (`call.put`), later steps read it by its type (`call.get`); the
record's class lives beside the step that writes it, so an import says who
provides what. Nothing travels back up this way: what a step below learns comes
back with the reply, or from its owner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest

R = TypeVar("R")


@dataclass
class Call:
    """What steps learn about one Request or Close and hand to later steps."""

    # Begin: the connection id is known here (a refresh or an update in place).
    refresh: bool = False
    # Begin: closing the old path of a reselect; a dead peer must not hold up the new one.
    reselecting: bool = False
    # Begin: endpoints to try last (the one a reselect moves away from).
    avoid: set[str] = field(default_factory=set)
    # Set when a program carries on a journalled connection after a restart:
    # says whether it is still wanted (its client may have closed it meanwhile).
    replay: Callable[[], bool] | None = None
    _records: dict[type, object] = field(default_factory=dict, repr=False)

    def put(self, record: object) -> None:
        """Hand later steps `record`, found by its type; a step puts only records it owns."""
        self._records[type(record)] = record

    def get(self, kind: type[R]) -> R | None:
        """The record of type `kind` an earlier step put, if it did."""
        return cast("R | None", self._records.get(kind))


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
    """Steps in order."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)

    async def request(self, request: NetworkServiceRequest, call: Call | None = None) -> Connection:
        return await Next(self.steps, 0).request(request, call or Call())

    async def close(self, conn: Connection, call: Call | None = None) -> None:
        await Next(self.steps, 0).close(conn, call or Call())
