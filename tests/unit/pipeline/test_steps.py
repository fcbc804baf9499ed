"""The agent's chain is the README's: its steps in the order a Request meets them."""

from __future__ import annotations

from pathlib import Path

from nsm_agent.datapath.tunnels import Underlay, VniBook
from nsm_agent.netns.resolve import NetnsRef
from nsm_agent.pipeline.connect import ConnectEndpoint
from nsm_agent.pipeline.link_watch import LinkWatch
from nsm_agent.pipeline.remote_mechanism import TunnelKinds
from nsm_agent.pipeline.select import Locator
from nsm_agent.pipeline.steps import Datapath, agent_steps
from nsm_agent.registry.local_endpoints import LocalEndpoints
from nsm_agent.state.journal import JournalStore
from nsm_common.chain.begin import Begin
from nsm_common.chain.monitor import ConnectionEvents
from tests.helpers.steps import FakeNetlink, FakeRegistry, FakeResolver


class NoFollow:
    """The kernel side of LinkWatch, here unused."""

    def watch(self, ns: NetnsRef) -> None:
        pass

    def unwatch(self, ns: NetnsRef) -> None:
        pass


ORDER = [
    "ValidateRequest",
    "PresentedToken",
    "UpdatePath",
    "SignSegment",
    "Authorize",
    "Begin",
    "Journal",
    "Monitor",
    "LinkWatch",
    "ClientNetns",
    "RemoteMechanismServer",
    "Discover",
    "Select",
    "TunnelWire",
    "KernelWire",
    "RemoteMechanismClient",
    "NodeExclusions",
    "ConnectEndpoint",
]


def test_the_steps_in_order(tmp_path: Path) -> None:
    netlink = FakeNetlink()
    steps = agent_steps(
        name="node1",
        default_lifetime=600,
        max_lifetime=600,
        netlink=netlink,
        resolver=FakeResolver(),
        registry=FakeRegistry([], []),
        locator=Locator(set(), LocalEndpoints(tmp_path)),
        kinds=TunnelKinds(netlink, Underlay("192.0.2.1", 1500), VniBook(4789), None, ["VXLAN"]),
        events=ConnectionEvents(),
        journal=JournalStore(tmp_path),
        begin=Begin(),
        connect=ConnectEndpoint(5),
        datapath=Datapath(),
        link_watch=LinkWatch(NoFollow()),
    )
    assert [type(s).__name__ for s in steps] == ORDER
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    listed = readme.split("the agent's steps of the Request chain, in order:", 1)[1].split("; each", 1)[0]
    names = [w.strip("`(),. \n") for w in listed.split("`")[1::2]]
    assert names == [
        "validate", "path_tokens", "update_path", "path_tokens", "authorize", "begin", "nsm_common.chain",
        "journal", "monitor", "link_watch", "client_netns",
        "remote_mechanism", "discover", "select", "tunnel_wire", "kernel_wire", "remote_mechanism", "connect",
    ]  # fmt: skip
