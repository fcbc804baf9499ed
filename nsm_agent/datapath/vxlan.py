"""A VXLAN device born in the node's namespace (where the underlay is) and moved
into a pod: its UDP socket stays with the node, its interface lives in the pod.

Every function here runs on the netlink thread (see netlink.py).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, replace

from pyroute2.netlink.exceptions import NetlinkError

from nsm_agent.datapath.links import EEXIST, WireError, configure, delete_link, ours, update_side
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


def vnis_in_use(nl: NetlinkThread, port: int) -> set[int]:
    """VNIs of VXLAN devices already in the node's namespace on `port` (another CNI's too)."""
    used: set[int] = set()
    for link in nl.node().get_links():
        info = link.get("IFLA_LINKINFO")
        if info is None or info.get("IFLA_INFO_KIND") != "vxlan":
            continue
        data = info.get("IFLA_INFO_DATA")
        if data is None:
            continue
        dev_port = data.get("IFLA_VXLAN_PORT") or 8472
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
) -> VxlanWire:
    node = nl.node()
    tmp = f"nsmv{vni:x}"[:15]
    v6 = ipaddress.ip_address(local).version == 6
    addr_args = {"vxlan_local6": local, "vxlan_group6": remote} if v6 else {"vxlan_local": local, "vxlan_group": remote}
    try:
        node.link("add", ifname=tmp, kind="vxlan", vxlan_id=vni, vxlan_port=port, mtu=mtu, **addr_args)
    except NetlinkError as exc:
        if exc.code == EEXIST:
            raise VniTaken(f"VNI {vni} on UDP port {port} is already taken on this node") from exc
        raise WireError(f"creating VXLAN {vni}: {exc}") from exc
    index = node.link_lookup(ifname=tmp)[0]
    fd = os.open(ns.path, os.O_RDONLY)
    try:
        node.link("set", index=index, net_ns_fd=fd, ifname=ifname)
    except NetlinkError as exc:
        node.link("del", index=index)
        if exc.code == EEXIST:
            raise WireError(f"interface name {ifname!r} is already used in {ns.path}", True) from exc
        raise WireError(f"moving VXLAN {vni} into {ns.path}: {exc}") from exc
    finally:
        os.close(fd)
    pod = nl.socket(ns)
    pod_index = pod.link_lookup(ifname=ifname)[0]
    try:
        pod.link("set", index=pod_index, ifalias=alias)
        configure(pod, pod_index, side)
        mac = str(pod.get_links(pod_index)[0].get("address"))
    except Exception as exc:
        pod.link("del", index=pod_index)
        raise WireError(f"configuring VXLAN {ifname}: {exc}") from exc
    nl.hold(ns)
    return VxlanWire(alias, ns, ifname, pod_index, vni, side, mtu, mac)


def remove(nl: NetlinkThread, wire: VxlanWire) -> None:
    try:
        try:
            pod = nl.socket(wire.ns)
        except OSError:
            return  # the pod is gone, and the device with it
        if ours(pod, wire.index, wire.alias):
            delete_link(pod, wire.index)
    finally:
        nl.unhold(wire.ns)
        nl.trim()


def alive(nl: NetlinkThread, wire: VxlanWire) -> bool:
    try:
        return ours(nl.socket(wire.ns), wire.index, wire.alias)
    except OSError:
        return False


def update(nl: NetlinkThread, wire: VxlanWire, side: SidePlan, mtu: int) -> VxlanWire:
    pod = nl.socket(wire.ns)
    if mtu != wire.mtu:
        pod.link("set", index=wire.index, mtu=mtu)
    if side != wire.side:
        update_side(pod, wire.index, wire.side, side)
    return replace(wire, side=side, mtu=mtu)


def adopt(
    nl: NetlinkThread, alias: str, ns: NetnsRef, ifname: str, vni: int, side: SidePlan, mtu: int
) -> VxlanWire | None:
    """A device this agent built before a restart, if it is there with the agreed VNI."""
    pod = nl.socket(ns)
    for index in pod.link_lookup(ifname=ifname):
        if not ours(pod, index, alias):
            continue
        link = pod.get_links(index)[0]
        info = link.get("IFLA_LINKINFO")
        data = info.get("IFLA_INFO_DATA") if info is not None else None
        if data is None or data.get("IFLA_VXLAN_ID") != vni:
            delete_link(pod, index)  # a stale tunnel: the agreement changed
            return None
        nl.hold(ns)
        wire = VxlanWire(
            alias, ns, ifname, index, vni, SidePlan((), ()), int(link.get("mtu")), str(link.get("address"))
        )
        return update(nl, wire, side, mtu)
    return None
