"""Policy routes (NSM v1 `IPContext.policies`) on the client's side, against the real kernel.

The shape of upstream's mutually-aware-nses example: two connections in one client
namespace, both client ends 172.16.1.101/32 toward 172.16.1.100/32, told apart by each
endpoint's policy (TCP 6666 by the first, UDP 5555 by the second).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest
from pyroute2.netns import setns

from nsm_agent.datapath import rtnl, veth, vxlan
from nsm_agent.datapath.links import (
    POLICY_TABLE_BASE,
    policy_table,
    random_mac,
    remove_policies,
    side_messages,
    sync_policies,
    update_side,
)
from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.decisions.wireplan import SidePlan, WirePlan, plan_ip_wire
from nsm_agent.netns.resolve import NetnsRef, NetnsResolver
from nsm_agent.netns.spec import NetnsSpec
from nsm_api.connectioncontext_pb2 import ConnectionContext, IPContext, PolicyRoute, Route
from nsm_common.netns import inside
from testbed.bed import Testbed, run
from tests.helpers.mesh import needs_root

pytestmark = needs_root

CLIENT, PEER = "172.16.1.101/32", "172.16.1.100/32"


def policy(source: str, proto: str = "", dst_port: str = "", routes: tuple[str, ...] = ()) -> PolicyRoute:
    out = PolicyRoute(proto=proto, dst_port=dst_port, routes=[Route(prefix=r) for r in routes])
    setattr(out, "from", source)  # `from` is a Python keyword
    return out


def plan(*policies: PolicyRoute, client: str = CLIENT, peer: str = PEER) -> WirePlan:
    """The plan the agent makes of an endpoint's reply (checked as it would be)."""
    ip = IPContext(src_ip_addrs=[client], dst_ip_addrs=[peer], policies=list(policies))
    return plan_ip_wire(ConnectionContext(ip_context=ip))


TCP = policy("172.16.1.101/32", "6", "6666", ("172.16.1.100/32",))
UDP = policy("172.16.1.101/32", "17", "5555", ("172.16.1.100/32",))


def ns_path(name: str) -> str:
    return f"/var/run/netns/{name}"


def veth_into(sock: rtnl.Rtnl, ifname: str, peer_ns: str, peer_ifname: str) -> int:
    """A veth pair from the socket's namespace into `peer_ns`; the near end's ifindex."""
    fd = os.open(ns_path(peer_ns), os.O_RDONLY)
    try:
        sock.run(rtnl.new_veth(ifname, random_mac(), peer_ifname, random_mac(), fd))
    finally:
        os.close(fd)
    index = sock.link_index(ifname)
    assert index is not None
    return index


def configure(sock: rtnl.Rtnl, index: int, side: SidePlan) -> None:
    """What a wire's build does with a client side."""
    sock.run(rtnl.set_link(index, up=True), *side_messages(index, side))
    sync_policies(sock, index, side)


def rules(ns: str, family: str = "-4") -> str:
    return run("ip", family, "-n", ns, "rule", "show").stdout


def ours(ns: str, index: int) -> list[str]:
    """The rules of the connection's table, both families."""
    table = f"lookup {policy_table(index)}"
    return [line for fam in ("-4", "-6") for line in rules(ns, fam).splitlines() if line.endswith(table)]


def selectors(lines: list[str]) -> set[str]:
    """Rules as `ip rule` shows them, without their priorities."""
    return {line.split("\t", 1)[1] for line in lines}


def route_get(ns: str, *args: str, family: str = "-4") -> str:
    return run("ip", family, "-n", ns, "route", "get", *args).stdout


def test_each_connection_gets_its_table_and_the_rules_pick_its_link(bed: Testbed) -> None:
    nsc, nse1, nse2 = bed.netns("nsc"), bed.netns("nse1"), bed.netns("nse2")
    sock = inside(ns_path(nsc), rtnl.Rtnl)
    try:
        first, second = veth_into(sock, "nsm-1", nse1, "nse-1"), veth_into(sock, "nsm-2", nse2, "nse-2")
        configure(sock, first, plan(TCP).client)
        configure(sock, second, plan(UDP).client)
        tcp = route_get(nsc, "172.16.1.100", "from", "172.16.1.101", "ipproto", "tcp", "dport", "6666")
        udp = route_get(nsc, "172.16.1.100", "from", "172.16.1.101", "ipproto", "udp", "dport", "5555")
        assert "172.16.1.100 from 172.16.1.101 dev nsm-1" in tcp, tcp
        assert "172.16.1.100 from 172.16.1.101 dev nsm-2" in udp, udp
        assert ours(nsc, first) == [f"32765:\tfrom 172.16.1.101 ipproto tcp dport 6666 lookup {policy_table(first)}"]
        assert len(ours(nsc, second)) == 1 and "ipproto udp dport 5555" in ours(nsc, second)[0]
        # The tables are above 255 (the 8-bit header field cannot say them) and hold the routes.
        assert policy_table(first) > POLICY_TABLE_BASE > 255
        table = run("ip", "-n", nsc, "route", "show", "table", str(policy_table(first))).stdout
        assert table.startswith("172.16.1.100 dev nsm-1 scope link") and len(table.splitlines()) == 1, table
        assert "172.16.1.100" not in run("ip", "-n", nsc, "route", "show").stdout  # not in main
        # Configuring again (a refresh) keeps one rule each.
        configure(sock, first, plan(TCP).client)
        assert len(ours(nsc, first)) == 1
    finally:
        sock.close()


def test_an_update_brings_rules_and_table_routes_to_the_new_plan(bed: Testbed) -> None:
    nsc, nse = bed.netns("nsc"), bed.netns("nse")
    sock = inside(ns_path(nsc), rtnl.Rtnl)
    try:
        index = veth_into(sock, "nsm-1", nse, "nse-1")
        wide = policy("172.16.1.101/32", "6", "7000-7100", ("10.50.0.0/16",))
        old = plan(TCP, wide).client
        configure(sock, index, old)
        assert len(ours(nsc, index)) == 2
        assert "ipproto tcp dport 7000-7100" in rules(nsc)
        assert "10.50.0.0/16 via 172.16.1.100" in run("ip", "-n", nsc, "route", "show", "table", "all").stdout
        new = plan(TCP, UDP).client
        update_side(sock, index, old, new)
        now = ours(nsc, index)
        assert len(now) == 2 and not any("7000-7100" in line for line in now), now
        assert any("ipproto udp dport 5555" in line for line in now), now
        assert "10.50.0.0/16" not in run("ip", "-n", nsc, "route", "show", "table", "all").stdout
        # The rule that stayed is the same rule (same priority): not removed and added again.
        assert next(line for line in now if "6666" in line).startswith("32765:")
        update_side(sock, index, new, plan().client)
        assert ours(nsc, index) == []
    finally:
        sock.close()


def test_remove_policies_leaves_no_rule_of_the_table_in_either_family(bed: Testbed) -> None:
    nsc, nse = bed.netns("nsc"), bed.netns("nse")
    sock = inside(ns_path(nsc), rtnl.Rtnl)
    try:
        index = veth_into(sock, "nsm-1", nse, "nse-1")
        dual = ConnectionContext(
            ip_context=IPContext(
                src_ip_addrs=[CLIENT, "fd00::101/128"],
                dst_ip_addrs=[PEER, "fd00::100/128"],
                policies=[TCP, policy("fd00::101/128", "6", "6666", ("fd00::100/128",)), policy("", "17")],
            )
        )
        configure(sock, index, plan_ip_wire(dual).client)
        assert len(ours(nsc, index)) == 3  # the policy with any source and no routes: IPv4
        run("ip", "-n", nsc, "rule", "add", "from", "10.9.9.9", "lookup", "100")  # someone else's
        table = str(policy_table(index))
        run("ip", "-n", nsc, "rule", "add", "iif", "lo", "lookup", table)  # ours, though we never add its like
        remove_policies(sock, index)
        assert ours(nsc, index) == []
        assert "from 10.9.9.9 lookup 100" in rules(nsc)
        remove_policies(sock, index)  # none left: fine
    finally:
        sock.close()


def test_an_ipv6_policy(bed: Testbed) -> None:
    nsc, nse1, nse2 = bed.netns("nsc"), bed.netns("nse1"), bed.netns("nse2")
    sock = inside(ns_path(nsc), rtnl.Rtnl)
    try:
        first, second = veth_into(sock, "nsm-1", nse1, "nse-1"), veth_into(sock, "nsm-2", nse2, "nse-2")
        for index, proto, port in ((first, "6", "6666"), (second, "17", "5555-5556")):
            v6 = policy("fd00::101/128", proto, port, ("fd00::100/128", "fd10::/64"))
            configure(sock, index, plan(v6, client="fd00::101/128", peer="fd00::100/128").client)
        tcp = route_get(nsc, "fd00::100", "from", "fd00::101", "ipproto", "tcp", "dport", "6666", family="-6")
        udp = route_get(nsc, "fd10::7", "from", "fd00::101", "ipproto", "udp", "dport", "5556", family="-6")
        assert re.search(r"fd00::100 from fd00::101 dev nsm-1\b", tcp), tcp
        assert re.search(r"fd10::7 from fd00::101 via fd00::100 dev nsm-2\b", udp), udp
        assert [line.split("\t")[1] for line in ours(nsc, second)] == [
            f"from fd00::101 ipproto udp dport 5555-5556 lookup {policy_table(second)}"
        ]
    finally:
        sock.close()


# Through the wires' own functions, on a netlink thread ---------------------------------
@pytest.fixture
def nl() -> Iterator[NetlinkThread]:
    thread = NetlinkThread()
    try:
        yield thread
    finally:
        thread.close()


def ref(name: str) -> NetnsRef:
    return NetnsResolver().resolve(NetnsSpec(path=ns_path(name)))


def twins(nsc: str, index: int) -> None:
    """A copy of each of the table's rules, as an agent adding rules again after a restart
    would leave (the kernel takes the same rule twice, under another priority)."""
    table = f"lookup {policy_table(index)}"
    for family in ("-4", "-6"):
        for line in rules(nsc, family).splitlines():
            if line.endswith(table):
                run("ip", family, "-n", nsc, "rule", "add", *line.split("\t", 1)[1].split())


def enter(path: str) -> None:
    """Move the calling thread into the namespace at `path` for good."""
    fd = os.open(path, os.O_RDONLY)
    try:
        setns(fd, flags=0)
    finally:
        os.close(fd)


def test_veth_build_adopt_and_remove_keep_exactly_the_plans_rules(bed: Testbed, nl: NetlinkThread) -> None:
    nsc, nse = bed.netns("nsc"), bed.netns("nse")
    client, endpoint = ref(nsc), ref(nse)
    alias = "nsm:test:policy"
    wire_plan = plan(TCP, UDP)
    wire = nl.run_sync(lambda t: veth.build(t, alias, client, "nsm-1", endpoint, "nse-1", wire_plan))
    assert len(ours(nsc, wire.client_index)) == 2
    # Adopting (after a restart) twice: the rules there are found, none is added again.
    for _ in range(2):
        found = nl.run_sync(lambda t: veth.adopt(t, alias, client, "nsm-1", endpoint, "nse-1", wire_plan))
        assert found is not None and found.client_index == wire.client_index
    assert len(ours(nsc, wire.client_index)) == 2
    before = ours(nsc, wire.client_index)
    # Twins a broken run left: adoption keeps one of each, the one lookups meet first.
    twins(nsc, wire.client_index)
    doubled = ours(nsc, wire.client_index)
    assert len(doubled) == 4
    nl.run_sync(lambda t: veth.adopt(t, alias, client, "nsm-1", endpoint, "nse-1", wire_plan))
    assert ours(nsc, wire.client_index) == doubled[:2] and selectors(doubled[:2]) == selectors(before)
    # Adopted with a plan without policies: the earlier plan's rules go.
    bare = plan()
    adopted = nl.run_sync(lambda t: veth.adopt(t, alias, client, "nsm-1", endpoint, "nse-1", bare))
    assert adopted is not None and ours(nsc, wire.client_index) == []
    wire = nl.run_sync(lambda t: veth.update(t, adopted, wire_plan))
    assert selectors(ours(nsc, wire.client_index)) == selectors(before)
    nl.run_sync(lambda t: veth.remove(t, wire))
    assert ours(nsc, wire.client_index) == [] and "nsm-1" not in run("ip", "-n", nsc, "link").stdout
    assert "lookup main" in rules(nsc)  # the kernel's own rules stay


def test_veth_remove_cleans_rules_when_the_link_went_first(bed: Testbed, nl: NetlinkThread) -> None:
    nsc, nse = bed.netns("nsc"), bed.netns("nse")
    client, endpoint = ref(nsc), ref(nse)
    wire = nl.run_sync(lambda t: veth.build(t, "nsm:test:gone", client, "nsm-1", endpoint, "nse-1", plan(TCP)))
    run("ip", "-n", nsc, "link", "del", "nsm-1")  # someone deleted it: the rules stayed
    assert len(ours(nsc, wire.client_index)) == 1
    nl.run_sync(lambda t: veth.remove(t, wire))
    assert ours(nsc, wire.client_index) == []


def test_vxlan_in_a_client_pod_adopts_and_removes_its_rules(bed: Testbed, nl: NetlinkThread) -> None:
    node, pod = bed.netns("node"), bed.netns("pod")
    run("ip", "-n", node, "link", "add", "u0", "type", "veth", "peer", "name", "u1")
    run("ip", "-n", node, "addr", "add", "192.0.2.1/24", "dev", "u0")
    run("ip", "-n", node, "link", "set", "u0", "up")
    # The netlink thread lives in the node's namespace, as the agent does in its node's.
    nl.run_sync(lambda _: enter(ns_path(node)))
    client, alias, side = ref(pod), "nsm:test:vx", plan(TCP).client
    wire = nl.run_sync(
        lambda t: vxlan.build(t, alias, client, "nsm-1", 4242, "192.0.2.1", "192.0.2.2", 4789, side, 1450)
    )
    assert len(ours(pod, wire.index)) == 1
    for _ in range(2):
        found = nl.run_sync(lambda t: vxlan.adopt(t, alias, client, "nsm-1", 4242, side, 1450))
        assert found is not None and found.index == wire.index
    assert len(ours(pod, wire.index)) == 1
    nl.run_sync(lambda t: vxlan.remove(t, wire))
    assert ours(pod, wire.index) == [] and "nsm-1" not in run("ip", "-n", pod, "link").stdout
