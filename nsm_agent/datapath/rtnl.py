"""The hot path's rtnetlink: pyroute2's message classes over one plain socket, in batches.

pyroute2's IPRoute costs about 200 µs of Python per call (request filters, an
event loop per call) for kernel work of a few µs, and opening one costs about
as much again. A connection's wire takes a dozen such calls, so on the Request
path they were most of the set-up time. Here each message is still encoded and
decoded by pyroute2 (`ifinfmsg`, `ifaddrmsg`, `rtmsg`, `fibmsg`, `nlmsgerr`), but we send
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

from nsm_agent.decisions.wireplan import IPInterface, IPNetwork, PolicyPlan, RoutePlan

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
RT_TABLE_UNSPEC = 0  # a table above 255 goes in the attribute, as iproute2 sends it
RT_TABLE_COMPAT = 252  # ... and the kernel's dumps say this in the 8-bit field instead
_FIBHDR = struct.Struct("=BBBBBBBBI")  # fib_rule_hdr: family, dst_len, src_len, tos, table, 2 reserved, action, flags
_U32 = struct.Struct("=I")
_U16 = struct.Struct("=H")
_PORTS = struct.Struct("=HH")  # fib_rule_port_range: start, end
FIB_RULE_INVERT = 0x2  # linux/fib_rules.h: `ip rule add not ...`
# linux/fib_rules.h, to 6.18; pyroute2 0.9 names only those up to 24.
FRA_SRC, FRA_PRIORITY, FRA_SUPPRESS_PREFIXLEN, FRA_TABLE = 2, 6, 14, 15
FRA_IP_PROTO, FRA_SPORT_RANGE, FRA_DPORT_RANGE, FRA_SPORT_MASK, FRA_DPORT_MASK = 22, 23, 24, 28, 29
# Selectors `add_rule` never sets: dst, iif, goto, fwmark, realm, tunnel id, suppress_ifgroup,
# fwmask, oif, l3mdev, uid range, dscp, flow label and its mask, dscp mask.
_OTHER_SELECTORS = frozenset({1, 3, 4, 10, 11, 12, 13, 16, 17, 19, 20, 25, 26, 27, 30})
_ALL_U16 = 0xFFFF  # a port mask 6.15+ shows for a single port: no mask at all
_ALL_U32 = 0xFFFFFFFF  # suppress_prefixlen not set


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


@dataclass(frozen=True)
class RuleMatch:
    """What an `ip rule` of ours selects on; the rule `add_rule` makes and the kernel's dump of
    it compare equal (`rule_match`, `rule_summary`)."""

    family: int  # AF_INET or AF_INET6
    src: IPNetwork | None  # None: from all
    proto: int | None
    dst_port: tuple[int, int] | None
    src_port: tuple[int, int] | None


@dataclass(frozen=True)
class RuleSummary:
    """A rule a dump showed: its family, the table it looks up, its priority (what tells it
    from a twin, for `del_rule`) and what it selects on (None when it selects on anything
    `add_rule` never sets, or does other than look up a table)."""

    family: int
    table: int
    priority: int
    match: RuleMatch | None


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

    def rules(self, table: int) -> list[RuleSummary]:
        """The IPv4 and IPv6 rules here that look up `table`, in the kernel's order (by
        priority). One dump of every family (AF_UNSPEC; the multicast routing families' too)."""
        data = self.run(dump_rules(socket.AF_UNSPEC))[0].data
        header = table if table < 256 else RT_TABLE_COMPAT  # what the 8-bit field says: skip the rest unread
        found = (rule_summary(message) for message in data if message[_HEADER.size + 4] == header)
        return [rule for rule in found if rule.table == table and rule.family in (socket.AF_INET, socket.AF_INET6)]


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


def rule_match(policy: PolicyPlan, family: int) -> RuleMatch:
    """What the rule `add_rule` makes of `policy` selects on, as `rule_summary` reads it back."""
    src = policy.src if policy.src is not None and policy.src.prefixlen else None  # /0: any, as the kernel shows it
    return RuleMatch(family, src, policy.proto, policy.dst_port, policy.src_port)


def add_rule(table: int, match: RuleMatch) -> fibmsg:
    """`ip rule add [from SRC] [ipproto P] [dport D] [sport S] lookup TABLE`.

    Without a priority the kernel gives each new rule the one below the first rule
    after `local`, so the same rule twice makes two rules, NLM_F_EXCL or not
    (measured on 6.18): callers compare with `Rtnl.rules` first.
    """
    msg = fibmsg()
    msg["header"]["type"] = RTM_NEWRULE
    msg["header"]["flags"] = NLM_F_CREATE | NLM_F_EXCL
    msg["family"] = match.family
    msg["table"] = table if table < 256 else RT_TABLE_UNSPEC  # 8 bits: FRA_TABLE says which
    msg["action"] = FR_ACT_TO_TBL
    attrs: list[tuple[str, object]] = [("FRA_TABLE", table)]
    if match.src is not None:
        msg["src_len"] = match.src.prefixlen
        attrs.append(("FRA_SRC", str(match.src.network_address)))
    if match.proto is not None:
        attrs.append(("FRA_IP_PROTO", match.proto))
    if match.dst_port is not None:
        attrs.append(("FRA_DPORT_RANGE", f"{match.dst_port[0]}:{match.dst_port[1]}"))
    if match.src_port is not None:
        attrs.append(("FRA_SPORT_RANGE", f"{match.src_port[0]}:{match.src_port[1]}"))
    msg["attrs"] = attrs
    return msg


def dump_rules(family: int) -> fibmsg:
    msg = fibmsg()
    msg["header"]["type"] = RTM_GETRULE
    msg["header"]["flags"] = NLM_F_DUMP
    msg["family"] = family
    return msg


def del_rule(rule: RuleSummary) -> fibmsg:
    """`ip rule del pref P table T`: the kernel compares only the selectors a deletion names,
    and a priority and a table name one rule (a twin has another priority). Not the dumped
    message sent back: later kernels' attributes (6.15's port masks) are beyond pyroute2 0.9."""
    msg = fibmsg()
    msg["header"]["type"] = RTM_DELRULE
    msg["header"]["flags"] = 0
    msg["family"] = rule.family
    msg["table"] = rule.table if rule.table < 256 else RT_TABLE_UNSPEC
    attrs: list[tuple[str, object]] = [("FRA_TABLE", rule.table)]
    if rule.priority:  # 0: only `local`'s, unless given by hand; then the first rule of the table
        attrs.append(("FRA_PRIORITY", rule.priority))
    msg["attrs"] = attrs
    return msg


def rule_summary(message: bytes) -> RuleSummary:
    """Read an RTM_NEWRULE message's table and selectors with `struct`, as `link_summary`
    does for links: each sync reads every rule of a pod, and a pod may hold many."""
    family, dst_len, src_len, tos, table, _, _, action, flags = _FIBHDR.unpack_from(message, _HEADER.size)
    offset, end = _HEADER.size + _FIBHDR.size, min(len(message), _HEADER.unpack_from(message)[0])
    src: IPNetwork | None = None
    proto: int | None = None
    priority = 0
    ports: dict[int, tuple[int, int]] = {}
    plain = dst_len == 0 and tos == 0 and action == FR_ACT_TO_TBL and not flags & FIB_RULE_INVERT
    while offset + _RTA.size <= end:
        length, kind = _RTA.unpack_from(message, offset)
        if length < _RTA.size:
            break
        value = message[offset + _RTA.size : offset + length]
        if kind == FRA_TABLE:
            table = _U32.unpack_from(value)[0]
        elif kind == FRA_PRIORITY:
            priority = _U32.unpack_from(value)[0]
        elif kind == FRA_SRC:
            src = ipaddress.ip_network((bytes(value), src_len), strict=False) if src_len else None
        elif kind == FRA_IP_PROTO:
            proto = value[0] or None
        elif kind in (FRA_DPORT_RANGE, FRA_SPORT_RANGE):
            ports[kind] = _PORTS.unpack_from(value)
        elif kind == FRA_SUPPRESS_PREFIXLEN:
            plain = plain and _U32.unpack_from(value)[0] == _ALL_U32
        elif kind in (FRA_SPORT_MASK, FRA_DPORT_MASK):
            plain = plain and _U16.unpack_from(value)[0] == _ALL_U16
        elif kind in _OTHER_SELECTORS:
            plain = False
        # Anything else (protocol, padding, attributes of later kernels) selects nothing
        # more: a rule in our table is ours, and taking it for a stranger would churn it each sync.
        offset += (length + 3) & ~3
    match = RuleMatch(family, src, proto, ports.get(FRA_DPORT_RANGE), ports.get(FRA_SPORT_RANGE)) if plain else None
    return RuleSummary(family, table, priority, match)


def _route(kind: int, flags: int, index: int, route: RoutePlan, table: int = RT_TABLE_MAIN) -> rtmsg:
    msg = rtmsg()
    msg["header"]["type"] = kind
    msg["header"]["flags"] = flags
    msg["family"] = socket.AF_INET6 if route.dst.version == 6 else socket.AF_INET
    msg["dst_len"] = route.dst.prefixlen
    msg["table"] = table if table < 256 else RT_TABLE_UNSPEC  # 8 bits: RTA_TABLE says which
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
