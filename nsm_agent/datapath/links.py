"""What every wire shares: errors, MACs, a side's addresses, routes and policy routes, deletion by alias.

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


# A connection's policy routes go in a routing table of its own, in the client's namespace.
# Its number is a pure function of the client link's ifindex: unique in the namespace as
# ifindexes are, the same after an agent restart (adoption finds the table and its rules
# again), and no allocation to journal or leak. The base keeps clear of tables people number
# by hand (1-255, and iproute2's examples), and base + any ifindex (a positive int32) stays
# below 2^32.
POLICY_TABLE_BASE = 0x4E53_0000  # "NS"


def policy_table(index: int) -> int:
    """The routing table of the connection whose client link is `index`."""
    return POLICY_TABLE_BASE + index


def _table_routes(side: SidePlan) -> set[RoutePlan]:
    return {route for policy in side.policies for route in policy.routes}


def side_messages(index: int, side: SidePlan) -> list[nlmsg]:
    """One side's addresses and routes (its policies' in their table too) as one batch for
    `Rtnl.run` (the link must be up first); the rules themselves: `sync_policies`."""
    msgs: list[nlmsg] = [rtnl.add_addr(index, addr) for addr in side.addrs]
    msgs += [rtnl.replace_route(index, route) for route in side.routes]
    table = policy_table(index)
    return msgs + [rtnl.replace_route(index, route, table) for route in sorted(_table_routes(side), key=str)]


def _families(policy: PolicyPlan) -> list[int]:
    """The families a policy's rule is needed in: its source's; with any source, its routes'
    (a policy without routes or source: IPv4, as `ip rule` assumes)."""
    versions = {policy.src.version} if policy.src is not None else {r.dst.version for r in policy.routes}
    return sorted(int(socket.AF_INET6 if v == 6 else socket.AF_INET) for v in versions or {4})


def wanted_rules(side: SidePlan) -> list[rtnl.RuleMatch]:
    """The rules SIDE's policies need, each once (two policies alike share one rule)."""
    matches = (rtnl.rule_match(policy, family) for policy in side.policies for family in _families(policy))
    return list(dict.fromkeys(matches))


def sync_policies(sock: rtnl.Rtnl, index: int, side: SidePlan) -> None:
    """Make the rules of the link's table exactly SIDE's policies, against a dump: missing
    ones are added first and then unwanted ones (an older plan's, a twin, anything else
    pointing at our table) deleted, so traffic never finds no rule in between; one that is
    there already is left alone, as the kernel would add it a second time (see `add_rule`).
    Of twins the first in the dump stays: the one lookups meet first, so deleting the others
    changes no lookup."""
    table = policy_table(index)
    present = sock.rules(table)
    wanted = wanted_rules(side)
    have = {rule.match for rule in present}
    missing = [rtnl.add_rule(table, match) for match in wanted if match not in have]
    if missing:
        sock.run(*missing)
    kept: set[rtnl.RuleMatch] = set()
    stale: list[nlmsg] = []
    for rule in present:
        if rule.match in wanted and rule.match not in kept:
            kept.add(rule.match)
        else:
            stale.append(rtnl.del_rule(rule))
    for reply in sock.batch(stale) if stale else []:
        if reply.error != -errno.ENOENT:  # gone meanwhile: fine
            reply.raise_for_error()


def remove_policies(sock: rtnl.Rtnl, index: int) -> None:
    """Delete every rule of the link's table. Call it before deleting a client link: the
    table's routes go with the link, but rules do not, and one left behind would send
    matching traffic to an empty table (and a later link with the same ifindex would find it)."""
    sync_policies(sock, index, SidePlan((), ()))


def update_side(sock: rtnl.Rtnl, index: int, old: SidePlan, new: SidePlan) -> None:
    """Bring a live link from `old` to `new`: what went is removed (already gone is fine).
    Rules are synced against a dump whenever either plan has policies, so that one removed
    by hand comes back as a removed route would."""
    gone: list[nlmsg] = [rtnl.del_route(index, route) for route in set(old.routes) - set(new.routes)]
    table = policy_table(index)
    gone += [rtnl.del_route(index, r, table) for r in _table_routes(old) - _table_routes(new)]
    gone += [rtnl.del_addr(index, addr) for addr in set(old.addrs) - set(new.addrs)]
    if gone:
        sock.batch(gone)
    sock.run(rtnl.set_link(index, up=True), *side_messages(index, new))
    if old.policies or new.policies:
        sync_policies(sock, index, new)


def owned(sock: rtnl.Rtnl, ifname: str, alias: str) -> ifinfmsg | None:
    """The link named `ifname` if it carries `alias` (what marks a link as ours)."""
    link = sock.link(ifname=ifname)
    return link if link is not None and link.get("ifalias") == alias else None


def delete_by_alias(sock: rtnl.Rtnl, alias: str) -> int:
    """Delete every link carrying `alias`, and the policy rules of its table (a client link's
    may have had some: rules outlive links); returns how many links went."""
    found = [link.index for link in sock.summaries() if link.alias == alias]
    for index in found:
        remove_policies(sock, index)
        sock.delete(index)
    return len(found)
