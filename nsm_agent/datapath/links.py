"""What every wire shares: errors, MACs, a side's addresses and routes, deletion by alias.

Every function here runs on the netlink thread (see netlink.py).
"""

from __future__ import annotations

import errno
import os
import socket

from pyroute2.netlink import nlmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from nsm_agent.datapath import rtnl
from nsm_agent.decisions.wireplan import PolicyPlan, RoutePlan, SidePlan


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


# A connection's policy routes go in a table of its own. Its number is the client link's
# ifindex above this base: unique in the namespace as ifindexes are, the same after an agent
# restart, and no allocation to keep.
POLICY_TABLE_BASE = 0x4E53_0000


def policy_table(index: int) -> int:
    return POLICY_TABLE_BASE + index


def _table_routes(index: int, side: SidePlan) -> set[RoutePlan]:
    return {route for policy in side.policies for route in policy.routes}


def side_messages(index: int, side: SidePlan) -> list[nlmsg]:
    """One side's addresses and routes (its policies' in their table too) as one batch for
    `Rtnl.run` (the link must be up first); the rules themselves: `sync_policies`."""
    msgs: list[nlmsg] = [rtnl.add_addr(index, addr) for addr in side.addrs]
    msgs += [rtnl.replace_route(index, route) for route in side.routes]
    table = policy_table(index)
    return msgs + [rtnl.replace_route(index, route, table) for route in sorted(_table_routes(index, side), key=str)]


def _families(policy: PolicyPlan) -> set[int]:
    versions = {policy.src.version} if policy.src is not None else {r.dst.version for r in policy.routes}
    return {socket.AF_INET6 if v == 6 else socket.AF_INET for v in versions or {4}}


def sync_policies(sock: rtnl.Rtnl, index: int, side: SidePlan) -> None:
    """The rules of the link's table are exactly SIDE's policies: whatever rules of that table
    are there (from before a restart, or an older plan) go, then each policy's is added."""
    table = policy_table(index)
    stale: list[nlmsg] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for data in sock.run(rtnl.dump_rules(family))[0].data:
            if rtnl.rule_table(data) == table:
                stale.append(rtnl.as_delete(data))
    if stale:
        sock.batch(stale)  # one gone meanwhile is fine
    wanted = [rtnl.add_rule(table, policy, family) for policy in side.policies for family in _families(policy)]
    for reply in sock.batch(wanted) if wanted else []:
        if reply.error != -errno.EEXIST:  # two policies alike make one rule
            reply.raise_for_error()


def remove_policies(sock: rtnl.Rtnl, index: int) -> None:
    """The rules of the link's table (its routes go with the link; rules stay without this)."""
    sync_policies(sock, index, SidePlan((), ()))


def update_side(sock: rtnl.Rtnl, index: int, old: SidePlan, new: SidePlan) -> None:
    """Bring a live link from `old` to `new`: what went is removed (already gone is fine)."""
    gone: list[nlmsg] = [rtnl.del_route(index, route) for route in set(old.routes) - set(new.routes)]
    table = policy_table(index)
    gone += [rtnl.del_route(index, r, table) for r in _table_routes(index, old) - _table_routes(index, new)]
    gone += [rtnl.del_addr(index, addr) for addr in set(old.addrs) - set(new.addrs)]
    if gone:
        sock.batch(gone)
    sock.run(rtnl.set_link(index, up=True), *side_messages(index, new))
    if old.policies != new.policies or new.policies:
        sync_policies(sock, index, new)


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
