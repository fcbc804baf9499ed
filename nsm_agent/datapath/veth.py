"""A veth pair between two pod namespaces on one node (KERNEL on both sides).

Every function here runs on the netlink thread (see netlink.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass, replace

from pyroute2.netlink.exceptions import NetlinkError

from nsm_agent.datapath import rtnl
from nsm_agent.datapath.links import (
    WireError,
    owned,
    random_mac,
    remove_policies,
    side_messages,
    sync_policies,
    update_side,
)
from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.decisions.wireplan import SidePlan, WirePlan
from nsm_agent.netns.resolve import NetnsRef


@dataclass(frozen=True)
class VethWire:
    alias: str
    client_ns: NetnsRef
    client_ifname: str
    client_index: int
    ep_ns: NetnsRef
    ep_ifname: str
    ep_index: int
    plan: WirePlan
    client_mac: str = ""
    ep_mac: str = ""


def ifname_in_use(nl: NetlinkThread, ns: NetnsRef, name: str, unless_alias: str = "") -> bool:
    """Someone else's interface has this name (one marked `unless_alias` is ours from before a restart)."""
    sock = nl.rtnl(ns)
    index = sock.link_index(name)
    return index is not None and not (unless_alias and sock.has_alias(index, unless_alias))


def build(
    nl: NetlinkThread,
    alias: str,
    client_ns: NetnsRef,
    client_ifname: str,
    ep_ns: NetnsRef,
    ep_ifname: str,
    plan: WirePlan,
) -> VethWire:
    """Create the pair with each end born in its pod, then address, route and raise both.

    Five round trips: create, find each end, configure each end (see rtnl.py).
    """
    sock_c = nl.rtnl(client_ns)
    sock_e = nl.rtnl(ep_ns)
    c_mac, e_mac = random_mac(), random_mac()
    fd = os.open(ep_ns.path, os.O_RDONLY)
    try:
        sock_c.run(rtnl.new_veth(client_ifname, c_mac, ep_ifname, e_mac, fd, plan.mtu))
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            if sock_c.link_index(client_ifname) is not None:
                raise WireError(f"interface name {client_ifname!r} is already used in {client_ns.path}", True) from exc
            raise WireError(f"interface name {ep_ifname!r} is already used in {ep_ns.path}") from exc
        raise WireError(f"creating veth {client_ifname}: {exc}") from exc
    finally:
        os.close(fd)
    c_index = sock_c.link_index(client_ifname)
    if c_index is None:
        raise WireError(f"the veth end {client_ifname} vanished from {client_ns.path}")
    try:
        e_index = sock_e.link_index(ep_ifname)
        if e_index is None:
            raise WireError(f"the veth end {ep_ifname} vanished from {ep_ns.path}")
        sock_c.run(rtnl.set_link(c_index, alias=alias), *side_messages(c_index, plan.client))
        if plan.client.policies:  # a new link's table has no rules: nothing to sync but adding
            sync_policies(sock_c, c_index, plan.client)
        sock_e.run(rtnl.set_link(e_index, alias=alias, up=True), *side_messages(e_index, plan.endpoint))
    except Exception as exc:
        with contextlib.suppress(NetlinkError, OSError):  # the first failure is the one to report
            if plan.client.policies:  # rules outlive the link
                remove_policies(sock_c, c_index)
            sock_c.delete(c_index)
        raise WireError(f"configuring veth {client_ifname}: {exc}") from exc
    nl.hold(client_ns)
    nl.hold(ep_ns)
    return VethWire(alias, client_ns, client_ifname, c_index, ep_ns, ep_ifname, e_index, plan, c_mac, e_mac)


def remove(nl: NetlinkThread, wire: VethWire) -> None:
    """Delete the pair (deleting either end removes both); only links carrying our alias.

    The client's policy rules first: they outlive the link. Whatever the plan says, as an
    update that failed half-way may have left rules the plan does not know of; one dump of
    the pod's rules (~60 µs here) is little next to the ~23 ms the kernel takes to delete a veth."""
    try:
        with contextlib.suppress(OSError, NetlinkError):  # a namespace gone took its rules along
            remove_policies(nl.rtnl(wire.client_ns), wire.client_index)
        for ns, index in ((wire.client_ns, wire.client_index), (wire.ep_ns, wire.ep_index)):
            try:
                sock = nl.rtnl(ns)
            except OSError:
                continue  # the namespace is gone, and the link with it
            if sock.has_alias(index, wire.alias):
                sock.delete(index)
                break
    finally:
        nl.unhold(wire.client_ns)
        nl.unhold(wire.ep_ns)
        nl.trim()


def update(nl: NetlinkThread, wire: VethWire, plan: WirePlan) -> VethWire:
    """Bring a live wire to a new plan in place: the interfaces (and ifindexes) stay."""
    if plan == wire.plan:
        return wire
    sock_c, sock_e = nl.rtnl(wire.client_ns), nl.rtnl(wire.ep_ns)
    if plan.mtu != wire.plan.mtu and plan.mtu:
        sock_c.run(rtnl.set_link(wire.client_index, mtu=plan.mtu))
        sock_e.run(rtnl.set_link(wire.ep_index, mtu=plan.mtu))
    update_side(sock_c, wire.client_index, wire.plan.client, plan.client)
    update_side(sock_e, wire.ep_index, wire.plan.endpoint, plan.endpoint)
    return replace(wire, plan=plan)


def alive(nl: NetlinkThread, wire: VethWire) -> bool:
    """Both ends still exist with our alias, and are up (one set down by someone else is rebuilt)."""
    try:
        return nl.rtnl(wire.client_ns).ours_and_up(wire.client_index, wire.alias) and nl.rtnl(wire.ep_ns).ours_and_up(
            wire.ep_index, wire.alias
        )
    except OSError:
        return False


def adopt(
    nl: NetlinkThread,
    alias: str,
    client_ns: NetnsRef,
    client_ifname: str,
    ep_ns: NetnsRef,
    ep_ifname: str,
    plan: WirePlan,
) -> VethWire | None:
    """A pair this agent built before a restart, if both ends are still there (then brought to `plan`).

    Its policy rules are synced against a dump, not added again: the update from an empty
    plan does that when `plan` has policies, and otherwise any rule of the pair's table (an
    earlier plan's) is removed here."""
    c = owned(nl.rtnl(client_ns), client_ifname, alias)
    e = owned(nl.rtnl(ep_ns), ep_ifname, alias)
    if c is None or e is None:
        return None
    empty = WirePlan(client=SidePlan((), ()), endpoint=SidePlan((), ()), mtu=0)
    wire = VethWire(
        alias, client_ns, client_ifname, int(c["index"]), ep_ns, ep_ifname, int(e["index"]), empty,
        str(c.get("address")), str(e.get("address")),
    )  # fmt: skip
    nl.hold(client_ns)
    nl.hold(ep_ns)
    wire = update(nl, wire, plan)
    if not plan.client.policies:
        remove_policies(nl.rtnl(client_ns), wire.client_index)
    return wire
