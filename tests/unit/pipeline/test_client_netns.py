"""ClientNetns: the pod's namespace and interface name, refused when taken, forgotten on Close."""

from __future__ import annotations

import grpc
import pytest

from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.netns.resolve import NetnsRef
from nsm_agent.pipeline.client_netns import ClientNetns, ClientSide
from nsm_agent.pipeline.validate import ValidateRequest
from nsm_api.connection_pb2 import Connection
from nsm_common.chain.chain import Chain
from nsm_common.errors import NsmError
from tests.helpers.steps import FailOn, FakeNetlink, FakeResolver, Recorder, kernel_request, no_name_in_use


def step(in_use=no_name_in_use) -> tuple[ClientNetns, FakeNetlink]:  # type: ignore[no-untyped-def]
    netlink = FakeNetlink()
    return ClientNetns("node1", FakeResolver(), netlink, in_use), netlink


async def test_the_client_side_for_later_steps_and_the_kernel_mechanism_in_the_reply() -> None:
    netns, _ = step()
    end = Recorder()
    reply = await Chain([ValidateRequest(), netns, end]).request(kernel_request("c1", ns="/var/run/netns/pod"))
    side = end.calls[0].get(ClientSide)
    assert side is not None and side.ns.path == "/var/run/netns/pod" and side.ifname == "nsm-1"
    assert reply.mechanism.parameters["name"] == "nsm-1" and reply.mechanism.parameters["netnsInode"] == str(
        side.ns.ino
    )
    assert reply.mechanism.cls == "LOCAL"
    await Chain([ValidateRequest(), netns, end]).close(Connection(id="c1"))
    assert netns._sides == {}


async def test_a_name_someone_else_uses_is_refused_and_nothing_kept() -> None:
    def taken(nl: NetlinkThread, ns: NetnsRef, name: str, alias: str) -> bool:
        return name == "nsm-1"

    netns, netlink = step(taken)
    end = Recorder()
    with pytest.raises(NsmError) as caught:
        await Chain([ValidateRequest(), netns, end]).request(kernel_request("c1"))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "already used" in caught.value.message
    assert end.requests == [] and netns._sides == {} and netlink.trims == 1


async def test_a_failure_below_trims_the_sockets_and_keeps_no_side() -> None:
    netns, netlink = step()
    with pytest.raises(NsmError):
        await Chain([ValidateRequest(), netns, FailOn(1), Recorder()]).request(kernel_request("c1"))
    assert netns._sides == {} and netlink.trims == 1


async def test_another_agent_passes_through() -> None:
    from nsm_api.connection_pb2 import Mechanism

    netns, _ = step()
    end = Recorder()
    req = kernel_request("c1")
    del req.mechanism_preferences[:]
    req.mechanism_preferences.append(Mechanism(cls="REMOTE", type="VXLAN"))
    await Chain([ValidateRequest(("VXLAN",)), netns, end]).request(req)
    assert end.calls[0].get(ClientSide) is None and netns._sides == {}
