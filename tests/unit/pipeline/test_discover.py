"""Discover: the service and its matching endpoints, or the one named; refreshes need no registry."""

from __future__ import annotations

import grpc
import pytest

from nsm_agent.pipeline.discover import Discover, Found
from nsm_agent.pipeline.journal import Journalled
from nsm_api.registry_pb2 import NetworkService, NetworkServiceLabels
from nsm_common.chain.chain import Call, Chain
from nsm_common.errors import NsmError
from tests.helpers.steps import FakeRegistry, Recorder, endpoint, kernel_request

EPS = [endpoint("a", "unix:///a.sock"), endpoint("b", "unix:///b.sock"), endpoint("c", "unix:///c.sock", "other")]


def registry() -> FakeRegistry:
    eps = list(EPS)
    eps[1].network_service_labels["svc"].CopyFrom(NetworkServiceLabels(labels={"zone": "x"}))
    svc = NetworkService(name="svc", payload="ETHERNET")
    return FakeRegistry([svc, NetworkService(name="other")], eps)


async def test_the_candidates_of_the_service_and_its_payload() -> None:
    end = Recorder()
    reply = await Chain([Discover(registry()), end]).request(kernel_request())
    found = end.calls[0].get(Found)
    assert found is not None and found.service is not None and found.service.name == "svc"
    assert sorted(e.name for e in found.candidates) == ["a", "b"] and reply.payload == "ETHERNET"


async def test_a_named_endpoint_and_the_refusals() -> None:
    end = Recorder()
    req = kernel_request()
    req.connection.network_service_endpoint_name = "b"
    await Chain([Discover(registry()), end]).request(req)
    found = end.calls[0].get(Found)
    assert found is not None and found.endpoint is not None and found.endpoint.name == "b"
    for service, name, text in (("nope", "", "not found in the registry"), ("svc", "zz", "'zz' not found")):
        req = kernel_request(service=service)
        req.connection.network_service_endpoint_name = name
        with pytest.raises(NsmError) as caught:
            await Chain([Discover(registry()), Recorder()]).request(req)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND and text in caught.value.message


async def test_a_refresh_goes_on_while_the_registry_is_away() -> None:
    reg = registry()
    reg.down = True
    end = Recorder()
    req = kernel_request()
    req.connection.network_service_endpoint_name = "a"
    await Chain([Discover(reg), end]).request(req, Call(refresh=True))
    found = end.calls[0].get(Found)
    assert found is not None and found.endpoint is None
    with pytest.raises(NsmError):  # a new connection cannot
        await Chain([Discover(reg), Recorder()]).request(kernel_request())


async def test_a_connection_carried_on_after_a_restart_needs_no_service_record() -> None:
    """A registry that restarted empty does not stop the journal's connections (its service
    comes back when an endpoint re-registers); a new connection to it is refused meanwhile."""
    reg = FakeRegistry([], [])
    end = Recorder()
    req = kernel_request()
    req.connection.network_service_endpoint_name = "a"
    call = Call()
    call.put(Journalled(True, lambda *a: None))
    await Chain([Discover(reg), end]).request(req, call)
    found = end.calls[0].get(Found)
    assert found is not None and found.endpoint is None
    with pytest.raises(NsmError) as caught:
        await Chain([Discover(reg), Recorder()]).request(kernel_request())
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
