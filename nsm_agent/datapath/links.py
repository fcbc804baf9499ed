"""What every wire shares: errors, MACs, a side's addresses and routes, deletion by alias.

Every function here runs on the netlink thread (see netlink.py).
"""

from __future__ import annotations

import os

from pyroute2.netlink import nlmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from nsm_agent.datapath import rtnl
from nsm_agent.decisions.wireplan import SidePlan


class WireError(RuntimeError):
    """Building the wire failed; `user_error` when the Request asked for the impossible."""

    def __init__(self, message: str, user_error: bool = False) -> None:
        super().__init__(message)
        self.user_error = user_error


def random_mac() -> str:
    """A locally administered unicast MAC, as the kernel would pick; ours to know without asking."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{o:02x}" for o in octets)


def side_messages(index: int, side: SidePlan) -> list[nlmsg]:
    """One side's addresses and routes as one batch for `Rtnl.run` (the link must be up first)."""
    msgs: list[nlmsg] = [rtnl.add_addr(index, addr) for addr in side.addrs]
    return msgs + [rtnl.replace_route(index, route) for route in side.routes]


def update_side(sock: rtnl.Rtnl, index: int, old: SidePlan, new: SidePlan) -> None:
    """Bring a live link from `old` to `new`: what went is removed (already gone is fine)."""
    gone: list[nlmsg] = [rtnl.del_route(index, route) for route in set(old.routes) - set(new.routes)]
    gone += [rtnl.del_addr(index, addr) for addr in set(old.addrs) - set(new.addrs)]
    if gone:
        sock.batch(gone)
    sock.run(rtnl.set_link(index, up=True), *side_messages(index, new))


def owned(sock: rtnl.Rtnl, ifname: str, alias: str) -> ifinfmsg | None:
    """The link named `ifname` if it carries `alias` (what marks a link as ours)."""
    link = sock.link(ifname=ifname)
    return link if link is not None and link.get("ifalias") == alias else None


def delete_by_alias(sock: rtnl.Rtnl, alias: str) -> int:
    """Delete every link carrying `alias`; returns how many went."""
    found = [link.index for link in sock.summaries() if link.alias == alias]
    for index in found:
        sock.delete(index)
    return len(found)
