"""Begin's per-connection locks go away with their last user, on every path."""

from __future__ import annotations

import asyncio

from nsm_api.connection_pb2 import Connection, Path, PathSegment
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.begin import Begin
from nsm_common.chain.chain import Call, Chain, Next, Step
from nsm_common.errors import invalid
from nsm_common.timeutil import now, ts_from


class Failing(Step):
    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        await asyncio.sleep(0.01)
        raise invalid("no")


def request(conn_id: str) -> NetworkServiceRequest:
    segment = PathSegment(name="c", id=conn_id, expires=ts_from(now() + 60))
    return NetworkServiceRequest(connection=Connection(id=conn_id, path=Path(index=0, path_segments=[segment])))


def test_failed_requests_leave_no_lock_behind() -> None:
    begin = Begin()
    chain = Chain([begin, Failing()])

    async def main() -> None:
        results = await asyncio.gather(*(chain.request(request("a")) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, Exception) for r in results)

    asyncio.run(main())
    assert begin._locks == {}


def test_a_request_and_its_close_leave_no_lock_behind() -> None:
    begin = Begin()
    chain = Chain([begin])

    async def main() -> None:
        reply = await chain.request(request("b"))
        assert begin._locks == {}
        await chain.close(reply)

    asyncio.run(main())
    assert begin._locks == {}
