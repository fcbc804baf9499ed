"""Carrying on after a restart (in process): each journalled connection carried on, undone or
tried again, with a chain whose outcome the test decides."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from pyroute2.netlink.rtnl import RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg

from nsm_agent.datapath.rtnl import LinkSummary, link_summary
from nsm_agent.decisions.restore import intact
from nsm_agent.state import restore as restoring
from nsm_agent.state.journal import DONE, INTENT, Entry, JournalStore
from nsm_api.connection_pb2 import Connection, Mechanism, PathSegment
from nsm_api.connection_pb2 import Path as ConnPath
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.begin import Begin
from nsm_common.chain.chain import Call, Chain, Next, Step
from nsm_common.chain.monitor import ConnectionEvents
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


def entry(cid: str, state: str = DONE, netns: tuple[str, ...] = ()) -> Entry:
    seg = PathSegment(name="node1", id=cid, expires=ts_from(now() + 60))
    conn = Connection(id=cid, path=ConnPath(index=0, path_segments=[seg]))
    req = NetworkServiceRequest(connection=conn)
    req.mechanism_preferences.append(Mechanism(cls="LOCAL", type="KERNEL", parameters={"inodeURL": "inode://1/2"}))
    out = Entry(cid, state, req, conn if state == DONE else None)
    if netns:
        out.notes["netns"] = list(netns)
    return out


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
    restore = restoring.Restore(store, chain, begin, ConnectionEvents(), "node1", FakeResolver(), FakeNetlink(), 1.0)
    out = await restore.run()
    # None noted a namespace (none intact): each was requested again before run() returned.
    assert (out.intact, out.rebuilt, out.undone, out.waiting) == (0, 1, 2, 1)  # "refused" and "torn" undone
    assert sorted(e.conn_id for e in store.entries()) == ["away", "kept"]  # "away" waits for its next hop
    for _ in range(100):
        if outcomes.replayed.count("away") >= 3:
            break
        await asyncio.sleep(0.05)
    assert outcomes.replayed.count("away") == 3 and store.read("away") is not None
    await asyncio.sleep(0.2)
    assert outcomes.replayed.count("away") == 3  # carried on: no more tries
    assert not restore.settling()


async def test_a_replay_cancelled_under_a_connection_still_wanted_is_tried_again(  # type: ignore[no-untyped-def]
    tmp_path: Path, monkeypatch
) -> None:
    """CANCELLED is also what a call says whose channel was closed under it (another replay
    to the same endpoint dropped the channel): the connection is still in the journal, so it
    is tried again, not taken for closed (it would stay there, never expiring)."""
    monkeypatch.setattr(restoring, "RETRY_EVERY", 0.05)
    store = JournalStore(tmp_path)
    store.write(entry("cut"))
    outcomes = Outcomes({"cut": [grpc.StatusCode.CANCELLED, None]})
    restore = restoring.Restore(store, Chain([outcomes]), Begin(), ConnectionEvents(), "node1", FakeResolver(),
                                FakeNetlink(), 1.0)  # fmt: skip
    out = await restore.run()
    assert out.waiting == 1 and store.read("cut") is not None
    await asyncio.wait_for(restore.settled(), 5)
    assert outcomes.replayed == ["cut", "cut"] and store.read("cut") is not None


async def test_intact_connections_are_carried_on_before_any_replay(tmp_path: Path) -> None:
    """A connection whose links are all up with its alias is carried on by the survey alone
    (Monitor shows it at once) and replayed later; one whose pod's namespace is gone is
    requested again at once, and undone when that fails; a Close before its replay undoes
    an intact one from the journal."""
    store = JournalStore(tmp_path)
    for e in (
        entry("whole", netns=("/run/netns/pod-a", "/run/netns/ep")),
        entry("closed-early", netns=("/run/netns/pod-c", "/run/netns/ep")),
        entry("half", netns=("/run/netns/pod-b", "/run/netns/ep")),  # its pod-side link is gone
        entry("pod-gone", netns=("/run/netns/gone", "/run/netns/ep")),
    ):
        store.write(e)
    resolver = FakeResolver()
    resolver.refused.add("/run/netns/gone")
    links = {
        "/run/netns/pod-a": {"nsm:node1:whole"},
        "/run/netns/pod-b": set(),
        "/run/netns/pod-c": {"nsm:node1:closed-early"},
        "/run/netns/ep": {"nsm:node1:whole", "nsm:node1:half", "nsm:node1:closed-early", "nsm:node1:pod-gone"},
    }
    outcomes = Outcomes(
        {"whole": [None], "closed-early": [None], "half": [None], "pod-gone": [grpc.StatusCode.NOT_FOUND]}
    )
    events = ConnectionEvents()
    begin = Begin()
    settle_gate = asyncio.Event()

    class Gate(Step):
        """Holds replays of intact connections until the test opens it."""

        async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
            if request.connection.id in ("whole", "closed-early"):
                await settle_gate.wait()
            return await nxt.request(request, call)

    restore = restoring.Restore(
        store, Chain([Gate(), begin, outcomes]), begin, events, "node1", resolver, FakeNetlink(), 1.0,
        aliases=lambda nl, ns: links[ns.path],
    )  # fmt: skip
    out = await restore.run()
    assert (out.intact, out.rebuilt, out.undone, out.waiting) == (2, 1, 1, 0)
    assert outcomes.replayed == ["half", "pod-gone"]  # the intact ones wait for the settling
    assert sorted(events.current) == ["closed-early", "whole"]  # "half" is shown by the chain's Monitor step
    assert store.read("pod-gone") is None
    closer = restoring.journal_closer(store, "node1", resolver, FakeNetlink(), 1.0, events)
    await closer(Connection(id="closed-early"))
    assert store.read("closed-early") is None and "closed-early" not in events.current
    assert restore.settling()
    settle_gate.set()
    await restore.settled()
    assert outcomes.replayed == ["half", "pod-gone", "whole"]  # the closed one is not replayed
    assert sorted(e.conn_id for e in store.entries()) == ["half", "whole"]


def test_intact_needs_every_noted_namespace_with_the_alias() -> None:
    present = {"/a": {"nsm:n:1", "nsm:n:2"}, "/b": {"nsm:n:1"}, "/gone": None}
    assert intact(["/a", "/b"], "nsm:n:1", present)
    assert not intact(["/a", "/b"], "nsm:n:2", present)  # its link in /b is gone (or down)
    assert not intact(["/a", "/gone"], "nsm:n:1", present)  # a namespace gone
    assert not intact(["/a", "/never-looked-at"], "nsm:n:1", present)
    assert not intact([], "nsm:n:1", present)  # nothing noted: nothing to check


@pytest.mark.parametrize("up", [True, False])
def test_link_summary_reads_what_pyroute2_encodes(up: bool) -> None:
    """The raw reader of link messages (restart survey, link events) against pyroute2's encoder."""
    msg = ifinfmsg()
    msg["header"]["type"] = RTM_NEWLINK
    msg["index"] = 41
    msg["flags"] = IFF_UP if up else 0
    msg["attrs"] = [
        ("IFLA_ADDRESS", "02:00:00:00:00:01"),
        ("IFLA_IFNAME", "nsm-1"),
        ("IFLA_MTU", 1400),
        ("IFLA_IFALIAS", "nsm:node1:4a6f"),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth")]}),
    ]
    msg.encode()
    assert link_summary(bytes(msg.data)) == LinkSummary(41, "nsm-1", "nsm:node1:4a6f", up)
    msg = ifinfmsg()
    msg["header"]["type"] = RTM_NEWLINK
    msg["index"] = 7
    msg["attrs"] = [("IFLA_IFNAME", "lo")]
    msg.encode()
    assert link_summary(bytes(msg.data)) == LinkSummary(7, "lo", "", False)


async def test_a_request_of_a_connection_not_settled_yet_has_its_replay_go_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background replays queue behind a slow one; a client's Request (a reselect, say) of
    one far back in the queue waits for that connection's replay, which goes at once."""
    monkeypatch.setattr(restoring, "SETTLE_CONCURRENCY", 1)
    store = JournalStore(tmp_path)
    ids = [f"e{i}" for i in range(5)]
    for cid in ids:
        store.write(entry(cid, netns=("/run/netns/ep",)))
    slow = asyncio.Event()
    seen: list[tuple[str, bool]] = []

    class Slow(Step):
        async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
            seen.append((request.connection.id, call.replay is not None))
            if request.connection.id == "e0" and call.replay is not None:
                await slow.wait()
            return request.connection

    begin = Begin()
    restore = restoring.Restore(
        store, Chain([begin, Slow()]), begin, ConnectionEvents(), "node1", FakeResolver(), FakeNetlink(), 1.0,
        aliases=lambda nl, ns: {f"nsm:node1:{cid}" for cid in ids},
    )  # fmt: skip
    out = await restore.run()
    assert out.intact == 5
    await asyncio.sleep(0.05)
    assert seen == [("e0", True)]  # the settling is stuck behind e0
    req = NetworkServiceRequest()
    req.CopyFrom(entry("e4").request)
    await asyncio.wait_for(Chain([begin, Slow()]).request(req, Call()), timeout=2)
    assert seen == [("e0", True), ("e4", True), ("e4", False)]  # its replay first, then the Request
    slow.set()
    await restore.settled()
    assert sorted(cid for cid, replay in seen if replay) == ids  # each replayed once
