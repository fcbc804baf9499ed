"""ValidateRequest: what a pod or another agent asks, and the refusals (in process)."""

from __future__ import annotations

import grpc
import pytest

from nsm_agent.pipeline.validate import PeerOffer, PodAsk, ValidateRequest
from nsm_api.connection_pb2 import Mechanism
from nsm_common.chain.chain import Chain
from nsm_common.errors import NsmError
from tests.helpers.steps import Recorder, kernel_request


async def test_a_pod_asks_for_kernel_and_an_agent_offers_remote() -> None:
    end = Recorder()
    chain = Chain([ValidateRequest(("VXLAN",)), end])
    await chain.request(kernel_request())
    ask = end.calls[0].get(PodAsk)
    assert ask is not None and ask.mechanism.type == "KERNEL" and end.calls[0].get(PeerOffer) is None
    req = kernel_request("c2")
    del req.mechanism_preferences[:]
    req.mechanism_preferences.append(Mechanism(cls="REMOTE", type="VXLAN", parameters={"src_ip": "192.0.2.1"}))
    await chain.request(req)
    offer = end.calls[1].get(PeerOffer)
    assert offer is not None and offer.mechanism.type == "VXLAN" and end.calls[1].get(PodAsk) is None


@pytest.mark.parametrize(
    ("change", "code", "text"),
    [
        (lambda r: r.connection.ClearField("network_service"), grpc.StatusCode.NOT_FOUND, "names no network service"),
        (lambda r: r.ClearField("mechanism_preferences"), grpc.StatusCode.INVALID_ARGUMENT, "no mechanism_preferences"),
        (lambda r: setattr(r.mechanism_preferences[0], "type", "MEMIF"), grpc.StatusCode.INVALID_ARGUMENT, "'MEMIF'"),
        (lambda r: setattr(r.mechanism_preferences[0], "cls", "REMOTE"), grpc.StatusCode.INVALID_ARGUMENT, "cls LOCAL"),
        (lambda r: r.mechanism_preferences[0].parameters.update(name="a/b"), grpc.StatusCode.INVALID_ARGUMENT, "'/'"),
    ],
)
async def test_refusals_name_the_problem_and_go_no_further(change, code, text) -> None:  # type: ignore[no-untyped-def]
    end = Recorder()
    req = kernel_request()
    change(req)
    with pytest.raises(NsmError) as caught:
        await Chain([ValidateRequest(("VXLAN",)), end]).request(req)
    assert caught.value.code == code and text in caught.value.message
    assert end.requests == []
