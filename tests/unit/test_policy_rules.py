"""The `ip rule` messages of policy routes, without a kernel: what `add_rule` encodes is what
`rule_summary` reads back (the kernel's dump is checked in tests/integration/test_policy_routes.py)."""

from __future__ import annotations

import ipaddress
import socket

from pyroute2.netlink.rtnl.fibmsg import fibmsg

from nsm_agent.datapath import rtnl
from nsm_agent.datapath.links import POLICY_TABLE_BASE, policy_table, wanted_rules
from nsm_agent.decisions.wireplan import PolicyPlan, RoutePlan, SidePlan


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def encoded(msg: fibmsg) -> bytes:
    msg.encode()
    return bytes(msg.data)


TO_PEER = (RoutePlan(net("172.16.1.100/32"), None),)


def test_a_rule_reads_back_as_it_was_made_with_a_table_beyond_the_header() -> None:
    table = policy_table(7)
    for match in [
        rtnl.RuleMatch(socket.AF_INET, net("172.16.1.101/32"), 6, (6666, 6666), None),
        rtnl.RuleMatch(socket.AF_INET6, net("fd00::/64"), 17, None, (1000, 2000)),
        rtnl.RuleMatch(socket.AF_INET, None, None, None, None),
    ]:
        data = encoded(rtnl.add_rule(table, match))
        assert data[16 + 4] == rtnl.RT_TABLE_UNSPEC  # the 8-bit field; FRA_TABLE says which
        summary = rtnl.rule_summary(data)
        assert (summary.family, summary.table, summary.match) == (match.family, table, match)


def test_a_source_of_length_zero_is_any_source_as_the_kernel_shows_it() -> None:
    everyone = PolicyPlan(net("0.0.0.0/0"), None, None, None, TO_PEER)
    assert rtnl.rule_match(everyone, socket.AF_INET).src is None


def test_a_rule_selecting_on_more_than_we_set_is_not_taken_for_ours() -> None:
    msg = rtnl.add_rule(policy_table(3), rtnl.RuleMatch(socket.AF_INET, None, 6, None, None))
    msg["attrs"] = [*msg["attrs"], ("FRA_IIFNAME", "lo")]
    summary = rtnl.rule_summary(encoded(msg))
    assert summary.table == policy_table(3) and summary.match is None


def test_deleting_names_the_rule_by_table_and_priority() -> None:
    rule = rtnl.RuleSummary(socket.AF_INET6, policy_table(9), 32760, None)
    msg = rtnl.del_rule(rule)
    assert msg["family"] == socket.AF_INET6
    assert dict(msg["attrs"]) == {"FRA_TABLE": policy_table(9), "FRA_PRIORITY": 32760}


def test_the_rules_a_side_needs_each_once_in_its_families() -> None:
    tcp = PolicyPlan(net("172.16.1.101/32"), 6, (6666, 6666), None, TO_PEER)
    anywhere = PolicyPlan(None, 17, None, None, (*TO_PEER, RoutePlan(net("fd10::/64"), None)))
    bare = PolicyPlan(None, None, (80, 80), None, ())
    side = SidePlan((), (), (tcp, tcp, anywhere, bare))
    assert wanted_rules(side) == [
        rtnl.RuleMatch(socket.AF_INET, net("172.16.1.101/32"), 6, (6666, 6666), None),
        rtnl.RuleMatch(socket.AF_INET, None, 17, None, None),
        rtnl.RuleMatch(socket.AF_INET6, None, 17, None, None),  # any source: both routes' families
        rtnl.RuleMatch(socket.AF_INET, None, None, (80, 80), None),  # no routes, no source: IPv4
    ]
    assert policy_table(1) == POLICY_TABLE_BASE + 1 and POLICY_TABLE_BASE + (1 << 31) - 1 < 1 << 32
