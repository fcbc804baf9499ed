"""Agreeing a tunnel (in process): VNIs proposed, kept, retried on a collision, given back on
failure and on Close; the endpoint's side answers an offer."""

from __future__ import annotations

import grpc
import pytest

from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.datapath.tunnels import Underlay, VniBook
from nsm_agent.pipeline.remote_mechanism import (
    DownstreamOffer,
    RemoteMechanismClient,
    RemoteMechanismServer,
    TunnelKinds,
    TunnelToClient,
)
from nsm_agent.pipeline.select import Chosen
from nsm_agent.pipeline.validate import ValidateRequest
from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Call, Chain
from nsm_common.errors import NsmError
from tests.helpers.steps import FailOn, FakeNetlink, Recorder, as_sent, endpoint, kernel_request

REMOTE = endpoint("ep", "tcp://192.0.2.2:5001")


def kinds(in_kernel: set[int] | None = None) -> TunnelKinds:
    taken = in_kernel or set()

    def scan(nl: NetlinkThread, port: int) -> set[int]:
        return set(taken)

    return TunnelKinds(FakeNetlink(), Underlay("192.0.2.1", 1500), VniBook(4789, scan=scan), None, ["VXLAN"])


def remote_call() -> Call:
    call = Call()
    call.put(Chosen(REMOTE, REMOTE.url, True))
    return call


async def test_the_client_offers_a_free_vni_and_keeps_what_was_agreed() -> None:
    k = kinds()
    end = Recorder(as_sent)
    step = RemoteMechanismClient(k, ["VXLAN"])
    await Chain([step, end]).request(kernel_request(), remote_call())
    offer = end.calls[0].get(DownstreamOffer)
    assert offer is not None and [m.type for m in offer.mechanisms] == ["VXLAN"]
    vni = int(offer.mechanisms[0].parameters["vni"])
    tunnel = k.agreed_toward_endpoint("c1")
    assert tunnel is not None and (tunnel.vni, tunnel.remote_ip) == (vni, "192.0.2.2")
    assert k.vnis.held == {vni: "c1"}
    await Chain([step, end]).request(kernel_request(), remote_call())  # a refresh offers what was agreed
    again = end.calls[1].get(DownstreamOffer)
    assert again is not None and again.mechanisms[0].parameters["vni"] == str(vni) and k.vnis.held == {vni: "c1"}
    await Chain([step, end]).close(Connection(id="c1"))
    assert k.vnis.held == {} and k.agreed_toward_endpoint("c1") is None


async def test_a_vni_the_other_node_picked_that_is_taken_here_is_given_back_and_asked_again() -> None:
    k = kinds(in_kernel={777})
    answers = iter([777, None])

    def answer(request: NetworkServiceRequest, call: Call) -> Connection:
        reply = as_sent(request, call)
        pick = next(answers)
        if pick is not None:
            reply.mechanism.parameters["vni"] = str(pick)
        return reply

    end = Recorder(answer)
    await Chain([RemoteMechanismClient(k, ["VXLAN"]), end]).request(kernel_request(), remote_call())
    assert len(end.requests) == 2 and len(end.closes) == 1  # the first answer closed again
    tunnel = k.agreed_toward_endpoint("c1")
    assert tunnel is not None and tunnel.vni != 777 and list(k.vnis.held) == [tunnel.vni]


async def test_failures_give_the_vni_back() -> None:
    k = kinds()
    with pytest.raises(NsmError):
        await Chain([RemoteMechanismClient(k, ["VXLAN"]), FailOn(1), Recorder()]).request(
            kernel_request(), remote_call()
        )
    assert k.vnis.held == {} and k.toward_endpoint == {}

    def bad(request: NetworkServiceRequest, call: Call) -> Connection:
        reply = as_sent(request, call)
        del reply.mechanism.parameters["dst_ip"]
        return reply

    end = Recorder(bad)
    with pytest.raises(NsmError) as caught:
        await Chain([RemoteMechanismClient(k, ["VXLAN"]), end]).request(kernel_request(), remote_call())
    assert caught.value.code == grpc.StatusCode.INTERNAL and "agent answered" in caught.value.message
    assert len(end.closes) == 1 and k.vnis.held == {} and k.toward_endpoint == {}


async def test_a_local_endpoint_is_offered_nothing() -> None:
    end = Recorder()
    call = Call()
    call.put(Chosen(endpoint("l", "unix:///l.sock"), "unix:///l.sock", False))
    await Chain([RemoteMechanismClient(kinds(), ["VXLAN"]), end]).request(kernel_request(), call)
    offer = end.calls[0].get(DownstreamOffer)
    assert offer is not None and offer.mechanisms == []


def peer_request() -> NetworkServiceRequest:
    req = kernel_request("s1")
    del req.mechanism_preferences[:]
    params = {"src_ip": "192.0.2.9", "src_port": "4789", "vni": "4242", "MTU": "1450"}
    req.mechanism_preferences.append(Mechanism(cls="REMOTE", type="VXLAN", parameters=params))
    return req


async def test_the_endpoint_side_answers_keeps_the_vni_and_gives_it_back() -> None:
    k = kinds()
    end = Recorder()
    step = RemoteMechanismServer(k)
    chain = Chain([ValidateRequest(("VXLAN",)), step, end])
    reply = await chain.request(peer_request())
    to_client = end.calls[0].get(TunnelToClient)
    assert to_client is not None and to_client.tunnel.vni == 4242 and to_client.tunnel.remote_ip == "192.0.2.9"
    assert reply.mechanism.parameters["dst_ip"] == "192.0.2.1" and k.vnis.held == {4242: "s1"}
    await chain.close(Connection(id="s1"))
    assert k.vnis.held == {}
    with pytest.raises(NsmError):
        await Chain([ValidateRequest(("VXLAN",)), step, FailOn(1), Recorder()]).request(peer_request())
    assert k.vnis.held == {}


def crossing(req: NetworkServiceRequest) -> NetworkServiceRequest:
    req.connection.network_service = "svc@cluster2"
    return req


async def test_between_domains_only_wireguard_is_offered_and_nothing_is_held_without_it() -> None:
    k = kinds()
    end = Recorder()
    with pytest.raises(NsmError) as caught:
        await Chain([RemoteMechanismClient(k, ["VXLAN"]), end]).request(crossing(kernel_request()), remote_call())
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "needs WIREGUARD; this agent offers VXLAN" in caught.value.message
    assert end.calls == [] and k.vnis.held == {} and k.toward_endpoint == {}


async def test_the_endpoint_side_refuses_vxlan_from_another_domain() -> None:
    k = kinds()
    chain = Chain([ValidateRequest(("VXLAN",)), RemoteMechanismServer(k), Recorder()])
    with pytest.raises(NsmError) as caught:
        await chain.request(crossing(peer_request()))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "only WIREGUARD" in caught.value.message
    assert k.vnis.held == {}


def test_a_peer_of_another_domain_is_given_the_public_address() -> None:
    k = TunnelKinds(FakeNetlink(), Underlay("10.0.0.1", 1500), VniBook(4789, scan=lambda nl, port: set()), None,
                    ["VXLAN"], public_ip="203.0.113.11")  # fmt: skip
    assert k.my_side("VXLAN", 7, "src")["src_ip"] == "10.0.0.1"
    assert k.my_side("VXLAN", 7, "src", crossing=True)["src_ip"] == "203.0.113.11"
    assert k.mtu("WIREGUARD") == 1370 and k.mtu("WIREGUARD", path_mtu=1400) == 1270
