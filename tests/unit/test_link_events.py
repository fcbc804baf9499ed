"""The kernel-news readers of the agent, in process: link-group datagrams read without
pyroute2's decode, and a namespace's end heard through inotify (a plain file stands in for
the bind mount; inotify treats them alike)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_NEWADDR, RTM_NEWLINK
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg

from nsm_agent.datapath.link_events import NamespaceEnds, read_events
from nsm_agent.datapath.rtnl import LinkSummary
from nsm_agent.netns.resolve import NetnsRef


def _link(kind: int, index: int, up: bool) -> bytes:
    msg = ifinfmsg()
    msg["header"]["type"] = kind
    msg["index"] = index
    msg["flags"] = IFF_UP if up else 0
    msg["attrs"] = [("IFLA_IFNAME", f"nsm-{index}"), ("IFLA_IFALIAS", f"nsm:node1:c{index}")]
    msg.encode()
    return bytes(msg.data)


def test_a_datagram_of_link_events_is_read_whole() -> None:
    addr = ifaddrmsg()
    addr["header"]["type"] = RTM_NEWADDR
    addr["index"] = 3
    addr.encode()
    buf = _link(RTM_NEWLINK, 3, False) + bytes(addr.data) + _link(RTM_DELLINK, 4, True)
    assert read_events(buf) == [
        (LinkSummary(3, "nsm-3", "nsm:node1:c3", False), False),
        (LinkSummary(4, "nsm-4", "nsm:node1:c4", True), True),
    ]


async def test_a_namespace_path_deleted_is_heard_at_once(tmp_path: Path) -> None:
    paths = [tmp_path / "pod-a", tmp_path / "pod-b"]
    refs = []
    for path in paths:
        path.write_text("")
        st = os.stat(path)
        refs.append(NetnsRef(str(path), st.st_dev, st.st_ino))
    gone: list[str] = []
    ends = NamespaceEnds(lambda ns: gone.append(ns.path))
    for ref in refs:
        ends.watch(ref)
    ends.watch(refs[0])  # a second connection in the same pod
    ends.unwatch(refs[0])  # one of them closed: still watched
    paths[0].unlink()
    for _ in range(100):
        if gone:
            break
        await asyncio.sleep(0.01)
    assert gone == [str(paths[0])]
    paths[1].unlink()
    ends.unwatch(refs[1])  # its last connection closed first: no news
    await asyncio.sleep(0.1)
    assert gone == [str(paths[0])]
    ends.close()


async def test_a_namespace_already_gone_when_watched_is_told() -> None:
    gone: list[str] = []
    ends = NamespaceEnds(lambda ns: gone.append(ns.path))
    ends.watch(NetnsRef("/nonexistent/netns/x", 1, 2))
    assert gone == ["/nonexistent/netns/x"]
    ends.close()
