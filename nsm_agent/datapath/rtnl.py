"""The hot path's rtnetlink: pyroute2's message classes over one plain socket, in batches.

pyroute2's IPRoute costs about 200 µs of Python per call (request filters, an
event loop per call) for kernel work of a few µs, and opening one costs about
as much again. A connection's wire takes a dozen such calls, so on the Request
path they were most of the set-up time. Here each message is still encoded and
decoded by pyroute2 (`ifinfmsg`, `ifaddrmsg`, `rtmsg`, `nlmsgerr`), but we send
several in one `send` and read their acknowledgements together: the kernel
handles the messages of one batch in order, each on its own, and acks each one.

Every netlink call in a pod's namespace goes through here (wires, adoption after
a restart, clean-up of interrupted requests), and the node's own hot path too
(VXLAN devices born into pods, the VNI scan, the WireGuard device check).
pyroute2's IPRoute stays for rare work in the node's namespace: underlay
discovery and setting up the WireGuard device.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyroute2.netlink import (
    NETLINK_EXT_ACK,
    NETLINK_ROUTE,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOL_NETLINK,
    nlmsg,
    nlmsgerr,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_GETLINK,
    RTM_GETRULE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    rt_proto,
    rt_scope,
    rt_type,
)
from pyroute2.netlink.rtnl.fibmsg import FR_ACT_TO_TBL, fibmsg
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD, ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import RTNH_F_ONLINK, rtmsg

from nsm_agent.decisions.wireplan import IPInterface, PolicyPlan, RoutePlan

# linux/netlink.h; pyroute2 does not name it. Errors then carry our request's
# header only, not a copy of the whole request.
NETLINK_CAP_ACK = 10
RT_TABLE_MAIN = 254  # linux/rtnetlink.h: the table `ip route` shows

# The batch reader walks the framing itself (one unpack per message, the hot
# path); what a message says is decoded by pyroute2's classes.
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_ERRNO = struct.Struct("=i")  # nlmsgerr.error, right after the header
_IFINDEX = struct.Struct("=i")  # ifinfomsg.ifi_index, after family, pad and type
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, pad, type, index, flags, change
_RTA = struct.Struct("=HH")  # rtattr: length, type
IFLA_IFNAME = 3  # linux/if_link.h
IFLA_IFALIAS = 20


@dataclass(frozen=True)
class LinkSummary:
    """What the agent asks of a link when it has many to look at: who it is and whether it is ours."""

    index: int
    ifname: str
    alias: str
    up: bool


def link_summary(message: bytes) -> LinkSummary:
    """Read an RTM_NEWLINK (or RTM_DELLINK) message's index, flags, name and alias.

    pyroute2's full decode costs ~100 µs a link (every statistic, every nested
    attribute); this walks the top-level attributes only, for a restart's look at
    a thousand links and for the stream of link events.
    """
    _, _, index, flags, _ = _IFINFO.unpack_from(message, _HEADER.size)
    offset, end = _HEADER.size + _IFINFO.size, min(len(message), _HEADER.unpack_from(message)[0])
    names = {IFLA_IFNAME: "", IFLA_IFALIAS: ""}
    while offset + _RTA.size <= end:
        length, kind = _RTA.unpack_from(message, offset)
        if length < _RTA.size:
            break
        if kind in names:
            names[kind] = message[offset + _RTA.size : offset + length].split(b"\0", 1)[0].decode(errors="replace")
        offset += (length + 3) & ~3
    return LinkSummary(index, names[IFLA_IFNAME], names[IFLA_IFALIAS], bool(flags & IFF_UP))


class _CappedAck(nlmsgerr):
    """An acknowledgement under NETLINK_CAP_ACK: the error, our request's header, then
    the extended-ack attributes (pyroute2's `nlmsgerr` expects them right after the error)."""

    __slots__ = ()
    fields = (
        ("error", "i"),
        ("request_length", "I"),
        ("request_type", "H"),
        ("request_flags", "H"),
        ("request_seq", "I"),
        ("request_pid", "I"),
    )


@dataclass
class Reply:
    """What the kernel sent back for one request of a batch."""

    error: int = 0  # a negative errno, 0 for success
    message: str = ""  # the kernel's extended ack text, if any
    data: list[bytes] = field(default_factory=list)  # whole netlink messages before the ack

    def raise_for_error(self) -> None:
        if self.error:
            code = -self.error
            raise NetlinkError(code, self.message or os.strerror(code))


class Rtnl:
    """One rtnetlink socket, bound to the namespace of the thread that opens it."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            self._sock.bind((0, 0))
            # Errors carry the kernel's text, without a copy of our request.
            self._sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def batch(self, messages: Sequence[nlmsg]) -> list[Reply]:
        """Send `messages` in one go; every one is answered (check each Reply)."""
        first = self._seq + 1
        out = bytearray()
        for msg in messages:
            self._seq += 1
            msg["header"]["sequence_number"] = self._seq
            msg["header"]["flags"] |= NLM_F_REQUEST | NLM_F_ACK
            msg.encode()
            out += msg.data
        self._sock.send(out)
        replies = [Reply() for _ in messages]
        pending = len(messages)
        while pending:
            buf = self._sock.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(buf):
                length, kind, _, seq, _ = _HEADER.unpack_from(buf, offset)
                if length < _HEADER.size:
                    break
                index = seq - first
                if 0 <= index < len(replies):
                    reply = replies[index]
                    if kind in (NLMSG_ERROR, NLMSG_DONE):  # an ack, or a dump's end
                        reply.error = _ERRNO.unpack_from(buf, offset + _HEADER.size)[0]
                        if reply.error and kind == NLMSG_ERROR:  # only failures carry text worth decoding
                            ack = _CappedAck(buf, offset=offset)
                            ack.decode()
                            reply.message = ack.get_attr("NLMSGERR_ATTR_MSG") or ""
                        pending -= 1
                    else:
                        reply.data.append(bytes(buf[offset : offset + length]))
                offset += (length + 3) & ~3
        return replies

    def run(self, *messages: nlmsg) -> list[Reply]:
        """`batch`, raising the first failure (the rest of the batch has run by then)."""
        replies = self.batch(messages)
        for reply in replies:
            reply.raise_for_error()
        return replies

    def _get_link(self, index: int = 0, ifname: str = "") -> bytes | None:
        """The RTM_NEWLINK message of link `index` (or named `ifname`), None when there is none."""
        reply = self.batch([get_link(index=index, ifname=ifname)])[0]
        if reply.error == -errno.ENODEV:
            return None
        reply.raise_for_error()
        return reply.data[0]

    def link_index(self, ifname: str) -> int | None:
        """The ifindex of `ifname` here, None when there is none."""
        data = self._get_link(ifname=ifname)
        return ifindex(data) if data is not None else None

    def link(self, index: int = 0, ifname: str = "") -> ifinfmsg | None:
        """The decoded link `index` (or named `ifname`), None when there is none."""
        data = self._get_link(index, ifname)
        if data is None:
            return None
        msg = ifinfmsg(data)
        msg.decode()
        return msg

    def summary(self, index: int) -> LinkSummary | None:
        """Link `index`, read as `link_summary` does; None when there is none."""
        data = self._get_link(index)
        return link_summary(data) if data is not None else None

    def has_alias(self, index: int, alias: str) -> bool:
        """Link `index` is here and carries `alias` (what marks a link as ours)."""
        link = self.summary(index)
        return link is not None and link.alias == alias

    def ours_and_up(self, index: int, alias: str) -> bool:
        """Link `index` is here, carries `alias` and is up: a wire end that can carry."""
        link = self.summary(index)
        return link is not None and link.alias == alias and link.up

    def delete(self, index: int) -> None:
        """Delete link `index`; already gone is fine."""
        reply = self.batch([del_link(index)])[0]
        if reply.error != -errno.ENODEV:
            reply.raise_for_error()

    def links(self, kind: str = "") -> list[ifinfmsg]:
        """Every link here, or every one of `kind`, decoded (the kernel filters by kind, so
        other links cost nothing)."""
        reply = self.run(dump_links(kind))[0]
        out = []
        for data in reply.data:
            msg = ifinfmsg(data)
            msg.decode()
            out.append(msg)
        return out

    def summaries(self) -> list[LinkSummary]:
        """Every link here, read as `link_summary` does (no pyroute2 decode)."""
        return [link_summary(data) for data in self.run(dump_links())[0].data]


def ifindex(message: bytes) -> int:
    """The ifindex in an RTM_NEWLINK message."""
    return int(_IFINDEX.unpack_from(message, _HEADER.size + 4)[0])


# Messages ------------------------------------------------------------------------
def _link(kind: int, flags: int = 0) -> ifinfmsg:
    msg = ifinfmsg()
    msg["header"]["type"] = kind
    msg["header"]["flags"] = flags
    return msg


def get_link(*, ifname: str = "", index: int = 0) -> ifinfmsg:
    msg = _link(RTM_GETLINK)
    msg["index"] = index
    if ifname:
        msg["attrs"] = [("IFLA_IFNAME", ifname)]
    return msg


def dump_links(kind: str = "") -> ifinfmsg:
    msg = _link(RTM_GETLINK, NLM_F_DUMP)
    if kind:
        msg["attrs"] = [("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", kind)]})]
    return msg


def new_veth(ifname: str, mac: str, peer_ifname: str, peer_mac: str, peer_netns_fd: int, mtu: int = 0) -> ifinfmsg:
    """A veth pair created with this end up and the peer born in the namespace of `peer_netns_fd`."""
    common = [("IFLA_MTU", mtu)] if mtu else []
    peer = {
        "attrs": [("IFLA_IFNAME", peer_ifname), ("IFLA_ADDRESS", peer_mac), ("IFLA_NET_NS_FD", peer_netns_fd), *common]
    }
    veth_data = {"attrs": [("VETH_INFO_PEER", peer)]}
    msg = _link(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
    msg["flags"] = msg["change"] = IFF_UP
    msg["attrs"] = [
        ("IFLA_IFNAME", ifname),
        ("IFLA_ADDRESS", mac),
        *common,
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", veth_data)]}),
    ]
    return msg


def new_vxlan(ifname: str, mac: str, vni: int, local: str, remote: str, port: int, mtu: int, netns_fd: int) -> ifinfmsg:
    """A VXLAN device created up in the namespace of `netns_fd`, its UDP socket staying where the
    message is sent: born in place, as moving a device between namespaces costs ~20 ms (RCU)."""
    v6 = ipaddress.ip_address(local).version == 6
    ends = (
        [("IFLA_VXLAN_LOCAL6", local), ("IFLA_VXLAN_GROUP6", remote)]
        if v6
        else [
            ("IFLA_VXLAN_LOCAL", local),
            ("IFLA_VXLAN_GROUP", remote),
        ]
    )
    data = {"attrs": [("IFLA_VXLAN_ID", vni), ("IFLA_VXLAN_PORT", port), *ends]}
    msg = _link(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
    msg["flags"] = msg["change"] = IFF_UP
    msg["attrs"] = [
        ("IFLA_IFNAME", ifname),
        ("IFLA_ADDRESS", mac),
        ("IFLA_NET_NS_FD", netns_fd),
        *([("IFLA_MTU", mtu)] if mtu else []),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "vxlan"), ("IFLA_INFO_DATA", data)]}),
    ]
    return msg


def set_link(index: int, *, up: bool | None = None, alias: str | None = None, mtu: int = 0) -> ifinfmsg:
    msg = _link(RTM_NEWLINK)
    msg["index"] = index
    if up is not None:
        msg["change"] = IFF_UP
        msg["flags"] = IFF_UP if up else 0
    attrs: list[tuple[str, object]] = []
    if alias is not None:
        attrs.append(("IFLA_IFALIAS", alias))
    if mtu:
        attrs.append(("IFLA_MTU", mtu))
    msg["attrs"] = attrs
    return msg


def del_link(index: int) -> ifinfmsg:
    msg = _link(RTM_DELLINK)
    msg["index"] = index
    return msg


def add_addr(index: int, addr: IPInterface) -> ifaddrmsg:
    """The address, without duplicate detection for IPv6 (our peer is the only other host)."""
    return _addr(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, index, addr)


def del_addr(index: int, addr: IPInterface) -> ifaddrmsg:
    return _addr(RTM_DELADDR, 0, index, addr)


def _addr(kind: int, flags: int, index: int, addr: IPInterface) -> ifaddrmsg:
    msg = ifaddrmsg()
    msg["header"]["type"] = kind
    msg["header"]["flags"] = flags
    msg["family"] = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    msg["prefixlen"] = addr.network.prefixlen
    msg["index"] = index
    msg["flags"] = IFA_F_NODAD if addr.version == 6 else 0
    msg["attrs"] = [("IFA_LOCAL", str(addr.ip)), ("IFA_ADDRESS", str(addr.ip))]
    return msg


def replace_route(index: int, route: RoutePlan, table: int = RT_TABLE_MAIN) -> rtmsg:
    return _route(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, index, route, table)


def del_route(index: int, route: RoutePlan, table: int = RT_TABLE_MAIN) -> rtmsg:
    return _route(RTM_DELROUTE, 0, index, route, table)


def add_rule(table: int, policy: PolicyPlan, family: int) -> fibmsg:
    """`ip rule add [from SRC] [ipproto P] [dport D] [sport S] lookup TABLE`; EEXIST when it
    is there already (NLM_F_EXCL: the kernel would add a duplicate otherwise)."""
    return _rule(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, table, policy, family)


def del_rule(table: int, policy: PolicyPlan, family: int) -> fibmsg:
    return _rule(RTM_DELRULE, 0, table, policy, family)


def _rule(kind: int, flags: int, table: int, policy: PolicyPlan, family: int) -> fibmsg:
    msg = fibmsg()
    msg["header"]["type"] = kind
    msg["header"]["flags"] = flags
    msg["family"] = family
    msg["table"] = table if table < 256 else 252  # RT_TABLE_COMPAT: the attribute says which
    msg["action"] = FR_ACT_TO_TBL
    attrs: list[tuple[str, object]] = [("FRA_TABLE", table)]
    if policy.src is not None:
        msg["src_len"] = policy.src.prefixlen
        attrs.append(("FRA_SRC", str(policy.src.network_address)))
    if policy.proto is not None:
        attrs.append(("FRA_IP_PROTO", policy.proto))
    if policy.dst_port is not None:
        attrs.append(("FRA_DPORT_RANGE", f"{policy.dst_port[0]}:{policy.dst_port[1]}"))
    if policy.src_port is not None:
        attrs.append(("FRA_SPORT_RANGE", f"{policy.src_port[0]}:{policy.src_port[1]}"))
    msg["attrs"] = attrs
    return msg


def dump_rules(family: int) -> fibmsg:
    msg = fibmsg()
    msg["header"]["type"] = RTM_GETRULE
    msg["header"]["flags"] = NLM_F_DUMP
    msg["family"] = family
    return msg


def as_delete(message: bytes) -> fibmsg:
    """The RTM_DELRULE of a rule a dump showed (every selector as it was)."""
    msg = fibmsg(message)
    msg.decode()
    out = fibmsg()
    out["header"]["type"] = RTM_DELRULE
    out["header"]["flags"] = 0
    for name in ("family", "dst_len", "src_len", "tos", "table", "action"):
        out[name] = msg[name]
    out["attrs"] = [(n, v) for n, v in msg["attrs"] if n not in ("FRA_UNSPEC", "FRA_PAD")]
    return out


def rule_table(message: bytes) -> int:
    """The table an RTM_NEWRULE message looks up."""
    msg = fibmsg(message)
    msg.decode()
    table = msg.get_attr("FRA_TABLE")
    return int(table if table is not None else msg["table"])


def _route(kind: int, flags: int, index: int, route: RoutePlan, table: int = RT_TABLE_MAIN) -> rtmsg:
    msg = rtmsg()
    msg["header"]["type"] = kind
    msg["header"]["flags"] = flags
    msg["family"] = socket.AF_INET6 if route.dst.version == 6 else socket.AF_INET
    msg["dst_len"] = route.dst.prefixlen
    msg["table"] = table if table < 256 else 252  # RT_TABLE_COMPAT: RTA_TABLE says which
    msg["proto"] = rt_proto["boot"]
    msg["type"] = rt_type["unicast"]
    attrs: list[tuple[str, object]] = [("RTA_DST", str(route.dst.network_address)), ("RTA_OIF", index)]
    if table != RT_TABLE_MAIN:
        attrs.append(("RTA_TABLE", table))
    if route.gateway is None:
        msg["scope"] = rt_scope["link"]
    else:
        msg["scope"] = rt_scope["universe"]
        msg["flags"] = RTNH_F_ONLINK
        attrs.append(("RTA_GATEWAY", str(route.gateway)))
    msg["attrs"] = attrs
    return msg
