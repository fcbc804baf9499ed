"""Select: round robin, fail-over to the next candidate, where each endpoint is, and its memory."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from nsm_agent.pipeline.discover import Found
from nsm_agent.pipeline.journal import Journalled
from nsm_agent.pipeline.select import Chosen, Locator, Select
from nsm_agent.registry.local_endpoints import LocalEndpoints
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Call, Chain, Next, Step
from nsm_common.errors import NsmError
from tests.helpers.steps import Recorder, endpoint, kernel_request

A, B = endpoint("a", "unix:///a.sock"), endpoint("b", "tcp://192.0.2.2:5001")
AGENT = "tcp://192.0.2.1:5001"


class Refusing(Step):
    """Fails Requests that go to the endpoints named, with `code`."""

    def __init__(self, names: set[str], code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self.names = names
        self.code = code

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        if request.connection.network_service_endpoint_name in self.names:
            raise NsmError(self.code, f"{request.connection.network_service_endpoint_name} refused")
        return await nxt.request(request, call)


def select(tmp_path: Path) -> Select:
    local = LocalEndpoints(tmp_path)
    local.put("mine", "unix:///mine.sock")
    return Select(Locator({AGENT}, local))


def call_with(*candidates) -> Call:  # type: ignore[no-untyped-def]
    call = Call()
    call.put(Found(candidates=list(candidates)))
    return call


async def test_the_next_candidate_when_one_fails_and_where_each_is(tmp_path: Path) -> None:
    end = Recorder()
    step = select(tmp_path)
    reply = await Chain([step, Refusing({"a"}), end]).request(kernel_request(), call_with(A, B))
    assert reply.network_service_endpoint_name == "b"
    chosen = end.calls[0].get(Chosen)
    assert chosen == Chosen(B, B.url, True)
    assert step._chosen["c1"] == chosen


async def test_an_error_no_other_endpoint_can_mend_stops_at_once(tmp_path: Path) -> None:
    end = Recorder()
    with pytest.raises(NsmError) as caught:
        await Chain([select(tmp_path), Refusing({"a", "b"}, grpc.StatusCode.INVALID_ARGUMENT), end]).request(
            kernel_request(), call_with(A, B)
        )
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and end.requests == []


async def test_all_failing_names_each_and_keeps_nothing(tmp_path: Path) -> None:
    step = select(tmp_path)
    with pytest.raises(NsmError) as caught:
        await Chain([step, Refusing({"a", "b"}), Recorder()]).request(kernel_request(), call_with(A, B))
    assert "a: a refused" in caught.value.message and "b: b refused" in caught.value.message
    assert step._chosen == {}


async def test_avoided_endpoints_go_last(tmp_path: Path) -> None:
    end = Recorder()
    call = call_with(A, B)
    call.avoid.add("a")
    await Chain([select(tmp_path), end]).request(kernel_request(), call)
    assert end.requests[0].connection.network_service_endpoint_name == "b"


async def test_a_refresh_the_registry_cannot_place_goes_where_it_went(tmp_path: Path) -> None:
    step = select(tmp_path)
    end = Recorder()
    await Chain([step, end]).request(kernel_request(), call_with(B))
    req = kernel_request()
    req.connection.network_service_endpoint_name = "b"
    await Chain([step, end]).request(req, Call(refresh=True))  # no Found: the registry is away
    assert end.calls[1].get(Chosen) == Chosen(B, B.url, True)
    await Chain([step, end]).close(Connection(id="c1"))
    assert step._chosen == {}


async def test_an_endpoint_registered_through_this_agent_is_reached_at_its_own_socket(tmp_path: Path) -> None:
    end = Recorder()
    mine = endpoint("mine", AGENT)
    await Chain([select(tmp_path), end]).request(kernel_request(), call_with(mine))
    assert end.calls[0].get(Chosen) == Chosen(mine, "unix:///mine.sock", False)
    stray = endpoint("stray", AGENT)
    with pytest.raises(NsmError) as caught:
        await Chain([select(tmp_path), Recorder()]).request(kernel_request(), call_with(stray))
    assert "never registered through it" in caught.value.message
    # Asked from another domain, the endpoint is `mine@THIS-DOMAIN`; it registered here as `mine`.
    asked = endpoint("mine@cluster2", AGENT)
    await Chain([select(tmp_path), end]).request(kernel_request(), call_with(asked))
    assert end.calls[1].get(Chosen) == Chosen(asked, "unix:///mine.sock", False)


async def test_after_a_restart_a_connection_goes_where_the_journal_says(tmp_path: Path) -> None:
    step, end = select(tmp_path), Recorder()
    for url, remote in (("unix:///ep.sock", False), ("tcp://192.0.2.2:5001", True)):
        req = kernel_request()
        req.connection.network_service_endpoint_name = "gone-from-the-registry"
        call = Call()
        call.put(Journalled(True, lambda *a: None, {"downstream": ["tcp://192.0.2.9:5001", url]}))
        await Chain([step, end]).request(req, call)
        assert end.calls[-1].get(Chosen) == Chosen(None, url, remote)  # the last noted: where it went
        await Chain([step, end]).close(Connection(id="c1"))
