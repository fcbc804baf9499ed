"""LinkWatch (in process): what the kernel says of a connection's links reaches the repairs,
except while this hop changes the connection itself, and not after its Close. Repair: a
broken wire is requested again from the journal; one that cannot be is reported DOWN."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from nsm_agent.datapath.rtnl import LinkSummary
from nsm_agent.netns.resolve import NetnsRef
from nsm_agent.pipeline.link_watch import CLIENT, ENDPOINT, LinkWatch, WireLinks
from nsm_agent.state.journal import DONE, Entry, JournalStore
from nsm_agent.state.repair import Repair
from nsm_api.connection_pb2 import DOWN, Connection, PathSegment
from nsm_api.connection_pb2 import Path as ConnPath
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.begin import Begin
from nsm_common.chain.chain import Call, Chain, Next, Step
from nsm_common.chain.monitor import ConnectionEvents
from nsm_common.errors import NsmError
from nsm_common.timeutil import now, ts_from
from tests.helpers.steps import kernel_request

POD = NetnsRef("/run/netns/pod", 1, 10)
EP = NetnsRef("/run/netns/ep", 1, 20)


class Follow:
    def __init__(self) -> None:
        self.watched: dict[tuple[int, int], int] = {}

    def watch(self, ns: NetnsRef) -> None:
        self.watched[ns.key] = self.watched.get(ns.key, 0) + 1

    def unwatch(self, ns: NetnsRef) -> None:
        self.watched[ns.key] -= 1
        if not self.watched[ns.key]:
            del self.watched[ns.key]


class Heard:
    def __init__(self) -> None:
        self.said: list[tuple[str, str]] = []

    def repair(self, conn_id: str, why: str) -> None:
        self.said.append(("repair", conn_id))

    def client_gone(self, conn_id: str, why: str) -> None:
        self.said.append(("client_gone", conn_id))

    def endpoint_gone(self, conn_id: str, why: str) -> None:
        self.said.append(("endpoint_gone", conn_id))


class Wire(Step):
    """A wire step: puts the links it 'built'; while it works, the kernel reports its own doing."""

    def __init__(self, watch: LinkWatch) -> None:
        self.watch = watch
        self.index = 5

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        self.watch.on_link(POD, LinkSummary(self.index, "nsm-1", "x", False), True)  # a rebuild's own delete
        self.index += 1
        call.put(WireLinks(((POD, self.index, CLIENT), (EP, 100 + self.index, ENDPOINT))))
        return request.connection


def link(index: int, up: bool = True) -> LinkSummary:
    return LinkSummary(index, "nsm-1", "nsm:node1:c1", up)


async def test_events_of_a_connections_links_reach_the_repairs() -> None:
    follow, heard = Follow(), Heard()
    watch = LinkWatch(follow, heard)
    chain = Chain([watch, Wire(watch)])
    await chain.request(kernel_request("c1"), Call())
    assert heard.said == []  # the wire step's own changes are not news
    assert follow.watched == {POD.key: 1, EP.key: 1}
    watch.on_link(POD, link(6), False)  # up: nothing broken
    watch.on_link(POD, link(99, up=False), False)  # not one of ours
    watch.on_link(POD, link(6, up=False), False)
    watch.on_link(EP, link(106), True)
    assert heard.said == [("repair", "c1"), ("repair", "c1")]
    heard.said.clear()
    await chain.request(kernel_request("c1"), Call())  # a refresh that rebuilt: new indexes
    assert heard.said == []  # its own delete of the followed link 6 was no news
    watch.on_link(POD, link(6), True)  # the old link: not followed any more
    assert heard.said == [] and follow.watched == {POD.key: 1, EP.key: 1}
    watch.on_snapshot(POD, [link(7)])  # the pod's end as the events began: there and up
    watch.on_snapshot(EP, [link(1)])  # the endpoint's end (index 107) gone before they began
    assert heard.said == [("repair", "c1")]
    heard.said.clear()
    watch.on_gone(POD)
    watch.on_gone(EP)
    assert heard.said == [("client_gone", "c1"), ("endpoint_gone", "c1")]
    heard.said.clear()
    await chain.close(Connection(id="c1"))
    watch.on_link(POD, link(7), True)
    watch.on_gone(POD)
    assert heard.said == [] and follow.watched == {}


def journalled(store: JournalStore, cid: str) -> None:
    req = kernel_request(cid)
    reply = Connection()
    reply.CopyFrom(req.connection)
    reply.path.CopyFrom(
        ConnPath(index=0, path_segments=[PathSegment(name="node1", id=cid, expires=ts_from(now() + 60))])
    )
    store.write(Entry(cid, DONE, req, reply))


class Answers(Step):
    def __init__(self, code: grpc.StatusCode | None) -> None:
        self.code = code
        self.asked: list[str] = []

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        self.asked.append(request.connection.id)
        assert call.replay is not None and call.replay()  # a replay of what the journal holds
        if self.code is not None:
            raise NsmError(self.code, "no")
        return request.connection


async def test_a_repair_requests_the_connection_again_or_reports_it_down(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    for cid in ("ok", "fails"):
        journalled(store, cid)
    events = ConnectionEvents()
    for cid in ("ok", "fails"):
        entry = store.read(cid)
        assert entry is not None and entry.reply is not None
        events.update(entry.reply)
    for cid, code in (("ok", None), ("fails", grpc.StatusCode.UNAVAILABLE)):
        answers = Answers(code)
        begin = Begin()
        repair = Repair(store, Chain([begin, answers]), begin, events)
        repair.repair(cid, "test")
        repair.repair(cid, "test again")  # one runs already: the second is the same repair
        await repair.idle()
        assert answers.asked == [cid]
    assert Connection.FromString(events.current["ok"]).state != DOWN
    assert Connection.FromString(events.current["fails"]).state == DOWN


async def test_a_pod_gone_during_a_repair_is_closed_after_it(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    journalled(store, "c1")
    gate = asyncio.Event()
    closed: list[str] = []

    class Slow(Step):
        async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
            await gate.wait()
            return request.connection

        async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
            closed.append(conn.id)

    begin = Begin()
    repair = Repair(store, Chain([begin, Slow()]), begin, ConnectionEvents())
    repair.repair("c1", "interface deleted")
    await asyncio.sleep(0.01)
    repair.client_gone("c1", "namespace gone")
    repair.repair("c1", "another event")  # the close is queued: nothing more to repair
    await asyncio.sleep(0.01)
    assert closed == []  # not while the repair runs
    gate.set()
    await repair.idle()
    assert closed == ["c1"]


class Keeps(Step):
    """A refresh that keeps the wire (the same links); while it runs, someone deletes one."""

    def __init__(self, watch: LinkWatch, meddle: bool) -> None:
        self.watch = watch
        self.meddle = meddle

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        if self.meddle:
            self.watch.on_link(EP, link(105), True)
        call.put(WireLinks(((POD, 5, CLIENT), (EP, 105, ENDPOINT))))
        return request.connection


async def test_a_link_the_request_kept_that_broke_meanwhile_is_repaired() -> None:
    follow, heard = Follow(), Heard()
    watch = LinkWatch(follow, heard)
    await Chain([watch, Keeps(watch, meddle=False)]).request(kernel_request("c1"), Call())
    await Chain([watch, Keeps(watch, meddle=True)]).request(kernel_request("c1"), Call())
    assert heard.said == [("repair", "c1")]
    assert follow.watched == {POD.key: 1, EP.key: 1}
