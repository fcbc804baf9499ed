"""The batching rtnetlink socket against the real kernel, in a namespace of the test's own."""

from __future__ import annotations

import errno
import ipaddress
import os

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from nsm_agent.datapath import rtnl
from nsm_agent.datapath.links import random_mac
from nsm_agent.decisions.wireplan import RoutePlan
from nsm_common.netns import inside
from testbed.bed import Testbed, run
from tests.helpers.mesh import needs_root

pytestmark = needs_root


def socket_in(path: str) -> rtnl.Rtnl:
    return inside(path, rtnl.Rtnl)


def test_a_batch_answers_every_message_and_a_failure_does_not_stop_the_rest(bed: Testbed) -> None:
    a, b = bed.netns("a"), bed.netns("b")
    sock = socket_in(f"/var/run/netns/{a}")
    fd = os.open(f"/var/run/netns/{b}", os.O_RDONLY)
    try:
        sock.run(rtnl.new_veth("x0", random_mac(), "y0", random_mac(), fd, 1400))
    finally:
        os.close(fd)
    index = sock.link_index("x0")
    assert index is not None and sock.link_index("nothing") is None
    addr = ipaddress.ip_interface("10.201.0.1/32")
    replies = sock.batch([
        rtnl.set_link(index, alias="nsm:test:1"),
        rtnl.replace_route(index, RoutePlan(ipaddress.ip_network("10.202.0.0/16"), ipaddress.ip_address("10.9.9.9"))),
        rtnl.add_addr(index, addr),
        rtnl.replace_route(index, RoutePlan(ipaddress.ip_network("10.201.0.2/32"), None)),
    ])  # fmt: skip
    assert [r.error == 0 for r in replies] == [True, True, True, True]  # the link is up from its creation
    assert sock.has_alias(index, "nsm:test:1") and not sock.has_alias(index, "nsm:test:2")
    assert "10.201.0.1/32" in run("ip", "-n", a, "addr", "show", "x0").stdout
    assert "10.201.0.2 dev x0 scope link" in run("ip", "-n", a, "route").stdout
    replies = sock.batch([rtnl.set_link(999999, up=True), rtnl.set_link(index, mtu=1300)])
    assert replies[0].error < 0 and replies[1].error == 0
    with pytest.raises(NetlinkError) as caught:
        replies[0].raise_for_error()
    assert caught.value.code == errno.ENODEV
    assert "mtu 1300" in run("ip", "-n", a, "link", "show", "x0").stdout
    sock.delete(index)
    sock.delete(index)  # gone already: fine
    assert sock.link_index("x0") is None
    assert run("ip", "-n", b, "-o", "link").stdout.count("y0") == 0
    sock.close()


def test_vxlan_created_in_a_pod_keeps_its_socket_where_it_was_asked_for(bed: Testbed) -> None:
    node, pod = bed.netns("node"), bed.netns("pod")
    run("ip", "-n", node, "link", "add", "u0", "type", "veth", "peer", "name", "u1")
    run("ip", "-n", node, "addr", "add", "192.0.2.1/24", "dev", "u0")
    run("ip", "-n", node, "link", "set", "u0", "up")
    on_node, in_pod = socket_in(f"/var/run/netns/{node}"), socket_in(f"/var/run/netns/{pod}")
    fd = os.open(f"/var/run/netns/{pod}", os.O_RDONLY)
    try:
        on_node.run(rtnl.new_vxlan("vx0", random_mac(), 4321, "192.0.2.1", "192.0.2.2", 4789, 1450, fd))
        with pytest.raises(NetlinkError) as caught:  # the same VNI again: the kernel says why
            on_node.run(rtnl.new_vxlan("vx1", random_mac(), 4321, "192.0.2.1", "192.0.2.2", 4789, 1450, fd))
    finally:
        os.close(fd)
    assert caught.value.code == errno.EEXIST and "VNI" in str(caught.value)
    assert in_pod.link_index("vx0") is not None and on_node.link_index("vx0") is None
    assert "0.0.0.0:4789" in run("ip", "netns", "exec", node, "ss", "-uan").stdout
    found = in_pod.links("vxlan")
    assert [link.get("ifname") for link in found] == ["vx0"]
    assert on_node.links("vxlan") == []  # the veth there is filtered out by the kernel
    on_node.close()
    in_pod.close()
