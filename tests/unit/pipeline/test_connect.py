"""ConnectEndpoint: the Request sent on as offered, the endpoint closed again on Close, and
after a failure that may have left something there."""

from __future__ import annotations

import grpc
import pytest

from nsm_agent.pipeline.connect import ConnectEndpoint
from nsm_agent.pipeline.remote_mechanism import DownstreamOffer
from nsm_agent.pipeline.select import Chosen
from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_common.chain.chain import Call, Chain
from nsm_common.errors import NsmError
from tests.helpers.steps import FakeEndpoint, Faults, Ledger, endpoint, kernel_request

EP = endpoint("ep", "unix:///ep.sock")


def to(url: str = EP.url, offer: list[Mechanism] | None = None) -> Call:
    call = Call()
    call.put(Chosen(EP, url, False))
    call.put(DownstreamOffer(offer or []))
    return call


async def test_kernel_by_default_the_offer_otherwise_and_close_sends_close() -> None:
    ledger = Ledger()
    far = FakeEndpoint(ledger)
    step = ConnectEndpoint(5, dial=far.dial)
    await Chain([step]).request(kernel_request(), to())
    assert [m.type for m in far.requests[0].mechanism_preferences] == ["KERNEL"]
    assert ledger.outstanding() == [("lease", "c1")] and far.dialled == [EP.url]
    await Chain([step]).close(Connection(id="c1"))
    assert ledger.outstanding() == [] and step._downstream == {}
    offer = [Mechanism(cls="REMOTE", type="VXLAN", parameters={"src_ip": "192.0.2.1"})]
    await Chain([step]).request(kernel_request("c2"), to(offer=offer))
    assert [m.type for m in far.requests[1].mechanism_preferences] == ["VXLAN"]


async def test_a_failed_new_request_is_closed_at_the_endpoint_too() -> None:
    ledger = Ledger()
    far = FakeEndpoint(ledger, Faults(at=1, after=True), fail_code=grpc.StatusCode.DEADLINE_EXCEEDED)
    step = ConnectEndpoint(5, dial=far.dial)
    with pytest.raises(NsmError) as caught:
        await Chain([step]).request(kernel_request(), to())
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and EP.url in caught.value.message
    await step.settle()
    assert ledger.outstanding() == []  # the endpoint had taken a lease; the Close gave it back


async def test_no_url_is_unavailable() -> None:
    step = ConnectEndpoint(5, dial=FakeEndpoint(Ledger()).dial)
    with pytest.raises(NsmError) as caught:
        await Chain([step]).request(kernel_request(), to(url=""))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and "no URL" in caught.value.message


async def test_a_failed_refresh_or_replay_never_closes_the_far_end() -> None:
    """After a restart (a replay, or a refresh of a journalled connection) the far end holds
    the connection: a deadline must not make this hop close it there."""
    from nsm_agent.pipeline.journal import Journalled

    for call in (Call(refresh=True), Call(replay=lambda: True), Call()):
        if not call.refresh and call.replay is None:
            call.put(Journalled(True, lambda *a: None))
        call.put(Chosen(EP, EP.url, False))
        ledger = Ledger()
        ledger.take("lease", "c1")  # the far end holds it from before
        far = FakeEndpoint(ledger, Faults(at=1), fail_code=grpc.StatusCode.DEADLINE_EXCEEDED)
        step = ConnectEndpoint(5, dial=far.dial)
        with pytest.raises(NsmError):
            await Chain([step]).request(kernel_request(), call)
        await step.settle()
        assert ledger.outstanding() == [("lease", "c1")]
