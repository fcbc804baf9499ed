"""The netlink thread: sockets stay in their namespace and on their thread."""

from __future__ import annotations

import os

import pytest

from nsm_agent.datapath.netlink import NetlinkThread, WrongThread
from nsm_agent.netns.resolve import NetnsRef, NetnsResolver
from nsm_agent.netns.spec import NetnsSpec
from testbed.bed import Testbed, links, run


def test_socket_reaches_its_namespace_and_no_other_thread_may_use_it(bed: Testbed) -> None:
    pod = bed.netns("pod")
    run("ip", "-n", pod, "link", "add", "mark0", "type", "bridge")
    ref = NetnsResolver().resolve(NetnsSpec(path=f"/var/run/netns/{pod}"))
    nl = NetlinkThread()
    try:
        names = nl.run_sync(lambda t: sorted(link.get("ifname") for link in t.rtnl(ref).links()))
        assert names == ["lo", "mark0"]
        # A caller on another thread cannot get (and so cannot misuse) the socket.
        with pytest.raises(WrongThread):
            nl.rtnl(ref)
        host_links = links_of_self()
        assert "mark0" not in host_links
    finally:
        nl.close()


def links_of_self() -> list[str]:
    out = run("ip", "-o", "link", "show").stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def test_opening_a_missing_namespace_creates_nothing(bed: Testbed) -> None:
    ghost = f"/var/run/netns/{bed.prefix}-ghost"
    nl = NetlinkThread()
    try:
        with pytest.raises(FileNotFoundError):
            nl.run_sync(lambda t: t.rtnl(NetnsRef(ghost, 0, 0)))
    finally:
        nl.close()
    assert not os.path.exists(ghost)


def test_sockets_are_closed_when_no_wire_needs_them(bed: Testbed) -> None:
    pod = bed.netns("pod")
    ref = NetnsResolver().resolve(NetnsSpec(path=f"/var/run/netns/{pod}"))
    nl = NetlinkThread()
    try:
        nl.run_sync(lambda t: t.rtnl(ref))
        nl.run_sync(lambda t: t.hold(ref))
        nl.run_sync(lambda t: t.trim())
        assert nl.run_sync(lambda t: ref.key in t._sockets)
        nl.run_sync(lambda t: t.unhold(ref))
        nl.run_sync(lambda t: t.trim())
        assert not nl.run_sync(lambda t: ref.key in t._sockets)
    finally:
        nl.close()
    assert links(pod) == ["lo"]
