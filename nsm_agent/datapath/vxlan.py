"""A VXLAN device created from the node's namespace (where the underlay is) straight
into a pod: its UDP socket stays with the node, its interface lives in the pod.

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
from nsm_agent.decisions.wireplan import SidePlan
from nsm_agent.netns.resolve import NetnsRef


class VniTaken(RuntimeError):
    """The kernel already has this VNI on this port in the node's namespace."""


@dataclass(frozen=True)
class VxlanWire:
    alias: str
    ns: NetnsRef
    ifname: str
    index: int
    vni: int
    side: SidePlan
    mtu: int
    mac: str


# A VXLAN device that names no port gets Linux's historical default, not IANA's 4789.
LINUX_DEFAULT_PORT = 8472


def vnis_in_use(nl: NetlinkThread, port: int) -> set[int]:
    """VNIs of VXLAN devices already in the node's namespace on `port` (another CNI's too)."""
    used: set[int] = set()
    for link in nl.node_rtnl().links("vxlan"):
        info = link.get("IFLA_LINKINFO")
        data = info.get("IFLA_INFO_DATA") if info is not None else None
        if data is None:
            continue
        dev_port = data.get("IFLA_VXLAN_PORT") or LINUX_DEFAULT_PORT
        if dev_port == port and data.get("IFLA_VXLAN_ID") is not None:
            used.add(int(data.get("IFLA_VXLAN_ID")))
    return used


def build(
    nl: NetlinkThread,
    alias: str,
    ns: NetnsRef,
    ifname: str,
    vni: int,
    local: str,
    remote: str,
    port: int,
    side: SidePlan,
    mtu: int,
    mac: str = "",
) -> VxlanWire:
    """Three batches: create in the pod, find it, alias + address + route (see rtnl.py).
    `mac`: the device's address (a rebuilt one keeps its old), else a new one."""
    pod = nl.rtnl(ns)
    mac = mac or random_mac()
    fd = os.open(ns.path, os.O_RDONLY)
    try:
        nl.node_rtnl().run(rtnl.new_vxlan(ifname, mac, vni, local, remote, port, mtu, fd))
    except NetlinkError as exc:
        if exc.code == errno.EEXIST and pod.link_index(ifname) is not None:
            raise WireError(f"interface name {ifname!r} is already used in {ns.path}", True) from exc
        if exc.code == errno.EEXIST:
            raise VniTaken(f"VNI {vni} on UDP port {port} is already taken on this node") from exc
        raise WireError(f"creating VXLAN {vni} in {ns.path}: {exc}") from exc
    finally:
        os.close(fd)
    index = pod.link_index(ifname)
    try:
        if index is None:
            raise WireError(f"the VXLAN device {ifname} vanished from {ns.path}")
        pod.run(rtnl.set_link(index, alias=alias), *side_messages(index, side))
        if side.policies:  # a new link's table has no rules: nothing to sync but adding
            sync_policies(pod, index, side)
    except Exception as exc:
        if index is not None:
            with contextlib.suppress(NetlinkError, OSError):  # the first failure is the one to report
                if side.policies:  # rules outlive the link
                    remove_policies(pod, index)
                pod.delete(index)
        raise WireError(f"configuring VXLAN {ifname}: {exc}") from exc
    nl.hold(ns)
    return VxlanWire(alias, ns, ifname, index, vni, side, mtu, mac)


def remove(nl: NetlinkThread, wire: VxlanWire) -> None:
    """Delete the device if it is still ours. Policy rules first, whatever the plan says and
    even when the device went already: rules outlive links (see veth.remove)."""
    try:
        try:
            pod = nl.rtnl(wire.ns)
        except OSError:
            return  # the pod is gone, and the device and rules with it
        with contextlib.suppress(NetlinkError):
            remove_policies(pod, wire.index)
        if pod.has_alias(wire.index, wire.alias):
            pod.delete(wire.index)
    finally:
        nl.unhold(wire.ns)
        nl.trim()


def alive(nl: NetlinkThread, wire: VxlanWire) -> bool:
    """The device still exists with our alias, and is up."""
    try:
        return nl.rtnl(wire.ns).ours_and_up(wire.index, wire.alias)
    except OSError:
        return False


def update(nl: NetlinkThread, wire: VxlanWire, side: SidePlan, mtu: int) -> VxlanWire:
    pod = nl.rtnl(wire.ns)
    if mtu != wire.mtu:
        pod.run(rtnl.set_link(wire.index, mtu=mtu))
    if side != wire.side:
        update_side(pod, wire.index, wire.side, side)
    return replace(wire, side=side, mtu=mtu)


def adopt(
    nl: NetlinkThread, alias: str, ns: NetnsRef, ifname: str, vni: int, side: SidePlan, mtu: int
) -> VxlanWire | None:
    """A device this agent built before a restart, if it is there with the agreed VNI; its
    policy rules synced against a dump (see veth.adopt)."""
    pod = nl.rtnl(ns)
    link = owned(pod, ifname, alias)
    if link is None:
        return None
    index = int(link["index"])
    info = link.get("IFLA_LINKINFO")
    data = info.get("IFLA_INFO_DATA") if info is not None else None
    if data is None or data.get("IFLA_VXLAN_ID") != vni:
        remove_policies(pod, index)  # rules outlive the link
        pod.delete(index)  # a stale tunnel: the agreement changed
        return None
    nl.hold(ns)
    wire = VxlanWire(alias, ns, ifname, index, vni, SidePlan((), ()), int(link.get("mtu")), str(link.get("address")))
    wire = update(nl, wire, side, mtu)
    if not side.policies:  # with policies, the update from an empty plan synced against a dump
        remove_policies(pod, index)
    return wire
