"""Begin (in process): refresh in place, reselect, expiry, Close of the unknown, and the undo
of a new connection that failed."""

from __future__ import annotations

import asyncio

import pytest

from nsm_api.connection_pb2 import RESELECT_REQUESTED, Connection, Path, PathSegment
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.begin import Begin
from nsm_common.chain.chain import Call, Chain, Next, Step
from nsm_common.errors import NsmError
from nsm_common.timeutil import now, ts_from
from tests.helpers.steps import FailOn, Recorder


def request(conn_id: str = "c1", lifetime: float = 60, endpoint: str = "") -> NetworkServiceRequest:
    segment = PathSegment(name="client", id=conn_id, expires=ts_from(now() + lifetime))
    conn = Connection(id=conn_id, path=Path(index=0, path_segments=[segment]), network_service_endpoint_name=endpoint)
    return NetworkServiceRequest(connection=conn)


class Calls(Step):
    """Records the call each Request and Close carried."""

    def __init__(self) -> None:
        self.requests: list[Call] = []
        self.closes: list[Call] = []

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        self.requests.append(call)
        return await nxt.request(request, call)

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        self.closes.append(call)
        await nxt.close(conn, call)


async def test_a_second_request_is_a_refresh_and_keeps_the_endpoint() -> None:
    seen, end = Calls(), Recorder()
    chain = Chain([Begin(), seen, end])
    await chain.request(request(endpoint="ep-1"))
    await chain.request(request())
    assert [c.refresh for c in seen.requests] == [False, True]
    assert end.requests[1].connection.network_service_endpoint_name == "ep-1"
    assert end.closes == []


async def test_reselect_closes_the_old_path_first_and_avoids_its_endpoint() -> None:
    seen, end = Calls(), Recorder()
    chain = Chain([Begin(), seen, end])
    await chain.request(request(endpoint="ep-1"))
    again = request(endpoint="ep-1")
    again.connection.state = RESELECT_REQUESTED
    await chain.request(again)
    assert len(end.closes) == 1 and seen.closes[0].reselecting
    assert seen.requests[1].avoid == {"ep-1"} and not seen.requests[1].refresh
    assert end.requests[1].connection.network_service_endpoint_name == ""


async def test_a_connection_nobody_refreshes_is_closed_when_its_lifetime_ends() -> None:
    end = Recorder()
    begin = Begin()
    await Chain([begin, end]).request(request(lifetime=0.2))
    await asyncio.sleep(0.5)
    assert len(end.closes) == 1 and begin._records == {}


async def test_close_of_an_unknown_id_succeeds_and_reaches_nothing() -> None:
    end = Recorder()
    asked: list[str] = []

    async def unknown(conn: Connection) -> None:
        asked.append(conn.id)

    await Chain([Begin(unknown), end]).close(Connection(id="nope"))
    assert end.closes == [] and asked == ["nope"]


async def test_a_new_connection_that_failed_is_closed_below_and_a_refresh_is_not() -> None:
    fail, end = FailOn(1), Recorder()
    chain = Chain([Begin(), fail, end])
    with pytest.raises(NsmError):
        await chain.request(request())
    assert fail.closes == 1  # whatever the steps below still held is undone
    await chain.request(request())
    fail.seen, fail.n, fail.closes = 0, 1, 0
    with pytest.raises(NsmError):
        await chain.request(request())  # a failed refresh: the connection stays as it was
    assert fail.closes == 0


async def test_a_connection_the_journal_holds_is_not_undone_when_its_first_request_fails() -> None:
    fail = FailOn(1)
    chain = Chain([Begin(held_elsewhere=lambda conn_id: conn_id == "c1"), fail, Recorder()])
    with pytest.raises(NsmError):
        await chain.request(request())
    assert fail.closes == 0


async def test_a_close_by_the_callers_id_waits_for_the_request_in_flight_and_closes_it() -> None:
    """The caller gave up waiting and closes by its own id while this hop still works."""
    gate = asyncio.Event()

    class Slow(Step):
        async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
            await gate.wait()
            return await nxt.request(request, call)

    end = Recorder()
    chain = Chain([Begin(), Slow(), end])
    req = request("mine")
    req.connection.path.path_segments.add(name="me", id="mine", expires=ts_from(now() + 60))
    req.connection.path.path_segments[0].id = "callers"
    req.connection.path.index = 1
    working = asyncio.create_task(chain.request(req))
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(chain.close(Connection(id="callers")))
    await asyncio.sleep(0.05)
    assert not closing.done()  # it waits for the Request
    gate.set()
    await working
    await closing
    assert len(end.closes) == 1


async def test_a_reselect_starts_the_path_anew_beyond_this_hop() -> None:
    end = Recorder()
    chain = Chain([Begin(), end])
    first = request(endpoint="ep-1")
    seg = first.connection.path.path_segments[0]
    seg.metrics["tunnel"] = "WIREGUARD"
    first.connection.path.path_segments.add(name="node2", id="far")
    await chain.request(first)
    again = request(endpoint="ep-1")
    again.connection.CopyFrom(first.connection)
    again.connection.state = RESELECT_REQUESTED
    await chain.request(again)
    sent = end.requests[1].connection.path
    assert [s.name for s in sent.path_segments] == ["client"] and dict(sent.path_segments[0].metrics) == {}
