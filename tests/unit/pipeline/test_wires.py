"""KernelWire and TunnelWire (and what they share, wire_step): built once the endpoint
answered, the endpoint's connection closed again when building fails, removed on Close."""

from __future__ import annotations

import grpc
import pytest

from nsm_agent.datapath.links import WireError
from nsm_agent.datapath.tunnels import Underlay, VniBook
from nsm_agent.datapath.vxlan import VniTaken
from nsm_agent.netns.spec import NetnsSpec
from nsm_agent.pipeline.client_netns import ClientSide
from nsm_agent.pipeline.kernel_wire import KernelWire
from nsm_agent.pipeline.remote_mechanism import Tunnel, TunnelKinds, TunnelToClient, _Agreed
from nsm_agent.pipeline.select import Chosen
from nsm_agent.pipeline.tunnel_wire import TunnelWire
from nsm_agent.pipeline.wire_step import WireStep
from nsm_api.connection_pb2 import Connection
from nsm_common.chain.chain import Call, Chain
from nsm_common.errors import NsmError
from tests.helpers.steps import (
    FakeNetlink,
    FakeResolver,
    FakeVeth,
    FakeVxlan,
    Faults,
    Ledger,
    Recorder,
    as_sent,
    endpoint,
    kernel_request,
)

POD = FakeResolver().resolve(NetnsSpec(path="/run/pod"))
LOCAL = endpoint("ep", "unix:///ep.sock")


def pod_call(remote: bool = False) -> Call:
    call = Call()
    call.put(ClientSide(POD, "nsm-1"))
    call.put(Chosen(LOCAL, LOCAL.url, remote))
    return call


async def test_a_veth_once_the_endpoint_answered_and_gone_on_close() -> None:
    ledger = Ledger()
    step = KernelWire("node1", FakeResolver(), FakeNetlink(), FakeVeth(ledger))
    end = Recorder(as_sent)
    chain = Chain([step, end])
    reply = await chain.request(kernel_request(), pod_call())
    assert ledger.outstanding() == [("veth", "nsm:node1:c1")]
    assert reply.context.ethernet_context.src_mac and reply.context.ethernet_context.dst_mac
    await chain.request(kernel_request(), pod_call())  # a refresh updates in place
    assert ledger.log == ["take veth nsm:node1:c1"]
    await chain.close(Connection(id="c1"))
    assert ledger.outstanding() == [] and step.wires == {}


async def test_a_veth_that_cannot_be_built_closes_the_endpoints_connection() -> None:
    ledger = Ledger()
    step = KernelWire("node1", FakeResolver(), FakeNetlink(), FakeVeth(ledger, Faults(at=1)))
    end = Recorder(as_sent)
    with pytest.raises(NsmError) as caught:
        await Chain([step, end]).request(kernel_request(), pod_call())
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert len(end.closes) == 1 and ledger.outstanding() == [] and step.wires == {}


async def test_no_veth_for_a_remote_endpoint_or_a_bad_answer() -> None:
    ledger = Ledger()
    step = KernelWire("node1", FakeResolver(), FakeNetlink(), FakeVeth(ledger))
    await Chain([step, Recorder(as_sent)]).request(kernel_request(), pod_call(remote=True))
    assert ledger.outstanding() == []

    def not_kernel(request, call):  # type: ignore[no-untyped-def]
        reply = as_sent(request, call)
        reply.mechanism.type = "MEMIF"
        return reply

    end = Recorder(not_kernel)
    with pytest.raises(NsmError) as caught:
        await Chain([step, end]).request(kernel_request(), pod_call())
    assert "not KERNEL" in caught.value.message and len(end.closes) == 1


def kinds() -> TunnelKinds:
    return TunnelKinds(FakeNetlink(), Underlay("192.0.2.1", 1500), VniBook(4789, scan=lambda nl, p: set()), None, [])


TUNNEL = Tunnel("VXLAN", 4242, "192.0.2.1", "192.0.2.2", 4789, 1450)


async def test_the_clients_end_follows_the_agreement_below_it() -> None:
    ledger, k = Ledger(), kinds()
    dp = FakeVxlan(ledger)
    step = TunnelWire("node1", FakeResolver(), FakeNetlink(), k, dp)

    def agreed_below(request, call):  # type: ignore[no-untyped-def]
        k.toward_endpoint["c1"] = _Agreed(b"", TUNNEL)  # RemoteMechanismClient, on the way out
        return as_sent(request, call)

    req = kernel_request()
    req.connection.path.path_segments.add(name="node1", id="c1")
    reply = await Chain([step, Recorder(agreed_below)]).request(req, pod_call(remote=True))
    assert dp.built == [("nsm:node1:c1", 4242, "192.0.2.1", "192.0.2.2")]
    assert reply.context.ethernet_context.src_mac == "02:00:00:00:00:03"
    assert dict(reply.path.path_segments[0].metrics) == {"tunnel": "VXLAN", "vni": "4242", "remote": "192.0.2.2"}
    await Chain([step, Recorder()]).close(Connection(id="c1"))
    assert ledger.outstanding() == []


async def test_the_endpoints_end_and_its_undo() -> None:
    ledger = Ledger()
    step = TunnelWire("node1", FakeResolver(), FakeNetlink(), kinds(), FakeVxlan(ledger, Faults(at=1)))
    call = Call()
    call.put(TunnelToClient(TUNNEL))
    end = Recorder(as_sent)
    with pytest.raises(NsmError):
        await Chain([step, end]).request(kernel_request(), call)
    assert len(end.closes) == 1 and ledger.outstanding() == [] and step.wires == {}
    step = TunnelWire("node1", FakeResolver(), FakeNetlink(), kinds(), FakeVxlan(ledger))
    reply = await Chain([step, Recorder(as_sent)]).request(kernel_request(), call)
    assert reply.context.ethernet_context.dst_mac == "02:00:00:00:00:03" and len(ledger.outstanding()) == 1
    no_tunnel = Recorder(as_sent)
    await Chain([step, no_tunnel]).request(kernel_request("c2"), Call())
    assert len(ledger.outstanding()) == 1  # nothing agreed: nothing to build


async def test_datapath_failures_become_statuses() -> None:
    step = KernelWire("node1", FakeResolver(), FakeNetlink())

    def raising(exc: Exception):  # type: ignore[no-untyped-def]
        def fn(nl):  # type: ignore[no-untyped-def]
            raise exc

        return fn

    for exc, code in (
        (WireError("name taken", user_error=True), grpc.StatusCode.INVALID_ARGUMENT),
        (WireError("kernel said no"), grpc.StatusCode.INTERNAL),
        (VniTaken("vni 5 taken"), grpc.StatusCode.UNAVAILABLE),
    ):
        with pytest.raises(NsmError) as caught:
            await WireStep.run(step, raising(exc))
        assert caught.value.code == code
