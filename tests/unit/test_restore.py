"""Carrying on after a restart (in process): each journalled connection carried on, undone or
tried again, with a chain whose outcome the test decides."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from nsm_agent.state import restore as restoring
from nsm_agent.state.journal import DONE, INTENT, Entry, JournalStore
from nsm_api.connection_pb2 import Connection, Mechanism, PathSegment
from nsm_api.connection_pb2 import Path as ConnPath
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.begin import Begin
from nsm_common.chain.chain import Call, Chain, Next, Step
from nsm_common.errors import NsmError
from nsm_common.timeutil import now, ts_from
from tests.helpers.steps import FakeNetlink, FakeResolver


class Outcomes(Step):
    """Answers each connection's replay as `plan` says: ok, or fails with a status code."""

    def __init__(self, plan: dict[str, list[grpc.StatusCode | None]]) -> None:
        self.plan = plan
        self.replayed: list[str] = []

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        cid = request.connection.id
        self.replayed.append(cid)
        outcome = self.plan[cid].pop(0) if len(self.plan[cid]) > 1 else self.plan[cid][0]
        if outcome is not None:
            raise NsmError(outcome, f"{cid}: {outcome.name}")
        return request.connection


def entry(cid: str, state: str = DONE) -> Entry:
    seg = PathSegment(name="node1", id=cid, expires=ts_from(now() + 60))
    conn = Connection(id=cid, path=ConnPath(index=0, path_segments=[seg]))
    req = NetworkServiceRequest(connection=conn)
    req.mechanism_preferences.append(Mechanism(cls="LOCAL", type="KERNEL", parameters={"inodeURL": "inode://1/2"}))
    return Entry(cid, state, req, conn if state == DONE else None)


async def test_carried_on_undone_and_tried_again(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(restoring, "RETRY_EVERY", 0.05)
    store = JournalStore(tmp_path)
    for e in (entry("kept"), entry("refused"), entry("away"), entry("torn", INTENT)):
        store.write(e)
    outcomes = Outcomes(
        {
            "kept": [None],
            "refused": [grpc.StatusCode.INVALID_ARGUMENT],
            "away": [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, None],
        }
    )
    begin = Begin()
    chain = Chain([outcomes])
    kept, undone = await restoring.restore(store, chain, begin, "node1", FakeResolver(), FakeNetlink(), 1.0)
    assert (kept, undone) == (1, 2)  # "refused" and the interrupted "torn" are undone
    assert sorted(e.conn_id for e in store.entries()) == ["away", "kept"]  # "away" waits for its next hop
    for _ in range(100):
        if outcomes.replayed.count("away") >= 3:
            break
        await asyncio.sleep(0.05)
    assert outcomes.replayed.count("away") == 3 and store.read("away") is not None
    await asyncio.sleep(0.2)
    assert outcomes.replayed.count("away") == 3  # carried on: no more tries
