"""Netlink steps every wire shares: addresses, routes, marks, deletion.

Every function here runs on the netlink thread (see netlink.py).
"""

from __future__ import annotations

import contextlib
import os

from pyroute2 import IPRoute
from pyroute2.netlink import nlmsg
from pyroute2.netlink.exceptions import NetlinkError

from nsm_agent.datapath import rtnl
from nsm_agent.decisions.wireplan import RoutePlan, SidePlan

IFA_F_NODAD = 0x02
RTNH_F_ONLINK = 0x04
RT_SCOPE_LINK = 253
EEXIST = 17
ENODEV = 19


class WireError(RuntimeError):
    """Building the wire failed; `user_error` when the Request asked for the impossible."""

    def __init__(self, message: str, user_error: bool = False) -> None:
        super().__init__(message)
        self.user_error = user_error


def configure(ipr: IPRoute, index: int, side: SidePlan) -> None:
    for addr in side.addrs:
        flags = IFA_F_NODAD if addr.version == 6 else 0
        try:
            ipr.addr("add", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen, flags=flags)
        except NetlinkError as exc:
            if exc.code != EEXIST:
                raise
    ipr.link("set", index=index, state="up")
    for route in side.routes:
        _add_route(ipr, index, route)


def random_mac() -> str:
    """A locally administered unicast MAC, as the kernel would pick; ours to know without asking."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{o:02x}" for o in octets)


def side_messages(index: int, side: SidePlan) -> list[nlmsg]:
    """One side's addresses and routes as one batch for `Rtnl.run` (the link must be up first)."""
    msgs: list[nlmsg] = [rtnl.add_addr(index, addr) for addr in side.addrs]
    return msgs + [rtnl.replace_route(index, route) for route in side.routes]


def _route_args(index: int, route: RoutePlan) -> dict[str, object]:
    args: dict[str, object] = {"dst": str(route.dst), "oif": index}
    if route.gateway is None:
        args["scope"] = RT_SCOPE_LINK
    else:
        args["gateway"] = str(route.gateway)
        args["flags"] = RTNH_F_ONLINK
    if route.dst.version == 6:
        args["family"] = 10
    return args


def _add_route(ipr: IPRoute, index: int, route: RoutePlan) -> None:
    ipr.route("replace", **_route_args(index, route))


def delete_link(ipr: IPRoute, index: int) -> None:
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code != ENODEV:
            raise


def ours(ipr: IPRoute, index: int, alias: str) -> bool:
    try:
        link = ipr.get_links(index)[0]
    except NetlinkError:
        return False
    return bool(link.get("ifalias") == alias)


def update_side(ipr: IPRoute, index: int, old: SidePlan, new: SidePlan) -> None:
    for route in set(old.routes) - set(new.routes):
        with contextlib.suppress(NetlinkError):
            ipr.route("del", **_route_args(index, route))
    for addr in set(old.addrs) - set(new.addrs):
        with contextlib.suppress(NetlinkError):
            ipr.addr("del", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen)
    configure(ipr, index, new)


def find_by_alias(ipr: IPRoute, alias: str) -> list[int]:
    return [int(link["index"]) for link in ipr.get_links() if link.get("ifalias") == alias]


def delete_by_alias(ipr: IPRoute, alias: str) -> int:
    """Delete every link carrying `alias`; returns how many went."""
    found = find_by_alias(ipr, alias)
    for index in found:
        delete_link(ipr, index)
    return len(found)
