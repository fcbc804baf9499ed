"""Every RPC of the agent's chain and of the registry, over real gRPC (in process, unix
sockets), fed random messages, messages mutated at the byte level, huge ones, deep label
maps, unicode names and the same ids at once. Each call ends with a status a person can act
on, never UNKNOWN or INTERNAL (but for bytes that are no message at all, which gRPC itself
refuses), nothing is left held afterwards, and the server still serves.

The agent's chain is its real step list over the fake datapath, registry and next hop of
tests/helpers/steps.py (the kernel path is fuzzed by nothing here: tests/integration covers
it with bad input of every kind)."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import given
from hypothesis import strategies as st

from nsm_agent.datapath.tunnels import Underlay, VniBook
from nsm_agent.pipeline.connect import ConnectEndpoint
from nsm_agent.pipeline.remote_mechanism import TunnelKinds
from nsm_agent.pipeline.select import Locator
from nsm_agent.pipeline.steps import Datapath, agent_steps
from nsm_agent.registry.local_endpoints import LocalEndpoints
from nsm_agent.state.journal import JournalStore
from nsm_api import connection_pb2_grpc, networkservice_pb2_grpc, registry_pb2_grpc
from nsm_api.connection_pb2 import Connection, MonitorScopeSelector
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_api.registry_pb2 import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceQuery,
)
from nsm_common.chain.begin import Begin
from nsm_common.chain.chain import Chain
from nsm_common.chain.monitor import ConnectionEvents, MonitorService
from nsm_common.chain.server import NetworkServiceServer
from nsm_common.limits import MAX_MESSAGE_BYTES
from nsm_registry.memory_store import MemoryStore
from nsm_registry.server import EndpointRegistry, ServiceRegistry
from tests.helpers.fuzz_strategies import TEXT, messages_of, mutated
from tests.helpers.served import served
from tests.helpers.steps import (
    FakeEndpoint,
    FakeNetlink,
    FakeRegistry,
    FakeResolver,
    FakeVeth,
    FakeVxlan,
    Ledger,
    endpoint,
    kernel_request,
    no_name_in_use,
)

NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


def status(fn: object) -> grpc.StatusCode:
    try:
        fn()  # type: ignore[operator]
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        assert exc.details(), code  # type: ignore[attr-defined]
        return code
    return grpc.StatusCode.OK


def parses(kind: type[Message], data: bytes) -> bool:
    try:
        kind.FromString(data)
    except DecodeError:
        return False
    return True


class Agent:
    """The agent's chain over fakes, served; what it holds is checked after each example."""

    def __init__(self, tmp: Path) -> None:
        self.ledger = Ledger()
        netlink = FakeNetlink()
        kinds = TunnelKinds(netlink, Underlay("192.0.2.1", 1500), VniBook(4789, scan=lambda nl, port: set()), None,
                            ["VXLAN"])  # fmt: skip
        self.far = FakeEndpoint(self.ledger)
        endpoints = [endpoint("ep-local", "unix:///fake/ep.sock"), endpoint("ep-remote", "tcp://192.0.2.2:5001")]
        self.journal = JournalStore(tmp / "state")
        self.steps = agent_steps(
            name="node1", default_lifetime=600, max_lifetime=600, netlink=netlink, resolver=FakeResolver(),
            registry=FakeRegistry([NetworkService(name="svc", payload="IP")], endpoints),
            locator=Locator({"unix:///agent.sock"}, LocalEndpoints(tmp / "state")), kinds=kinds,
            events=(events := ConnectionEvents()), journal=self.journal, begin=Begin(held_elsewhere=self.journal.holds),
            connect=ConnectEndpoint(5.0, None, dial=self.far.dial),
            datapath=Datapath(FakeVeth(self.ledger), FakeVxlan(self.ledger), no_name_in_use),
        )  # fmt: skip
        self.events = events
        self.target = f"unix:{tmp}/agent.sock"

    def add(self, server: grpc.aio.Server) -> None:
        networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(NetworkServiceServer(Chain(self.steps)), server)
        connection_pb2_grpc.add_MonitorConnectionServicer_to_server(MonitorService(self.events), server)

    def held(self) -> list[str]:
        out = [f"{k} {v}" for k, v in self.ledger.outstanding()]
        out += [f"journal {e.conn_id}" for e in self.journal.entries()]
        for step in self.steps:
            for attr in ("_records", "_sides", "_chosen", "_downstream", "wires", "_agreed", "_locks"):
                if getattr(step, attr, None):
                    out.append(f"{type(step).__name__}.{attr}")
        return out


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> object:
    world = Agent(tmp_path_factory.mktemp("agent"))
    with served(world.add, world.target):
        channel = grpc.insecure_channel(world.target)
        world.stub = networkservice_pb2_grpc.NetworkServiceStub(channel)  # type: ignore[attr-defined]
        world.raw = channel  # type: ignore[attr-defined]
        yield world
        channel.close()


def close_if_made(world: Agent, request: NetworkServiceRequest) -> grpc.StatusCode:
    """Request; Close what was made; the status of the Request."""
    try:
        conn = world.stub.Request(request, timeout=10)  # type: ignore[attr-defined]
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined,no-any-return]
    assert status(lambda: world.stub.Close(conn, timeout=10)) == grpc.StatusCode.OK  # type: ignore[attr-defined]
    return grpc.StatusCode.OK


SEEN: dict[str, set[grpc.StatusCode]] = {}


@given(messages_of(NetworkServiceRequest.DESCRIPTOR))
def test_agent_requests_of_any_shape(agent: Agent, request: NetworkServiceRequest) -> None:
    code = close_if_made(agent, request)
    SEEN.setdefault("request", set()).add(code)
    assert code not in NEVER
    assert agent.held() == []


@given(
    st.one_of(st.just("svc"), TEXT),
    st.dictionaries(TEXT, TEXT, max_size=8),
    st.one_of(st.just("nsm-1"), TEXT),
    st.one_of(st.just("c-1"), TEXT),
)
def test_agent_requests_that_are_nearly_right(agent: Agent, service: str, labels: dict[str, str], ifname: str,
                                              conn_id: str) -> None:  # fmt: skip
    """A pod's Request with one part anything: unicode, huge, empty, a path, the same id."""
    request = kernel_request(conn_id, service)
    request.connection.labels.update(labels)
    request.mechanism_preferences[0].parameters["name"] = ifname
    code = close_if_made(agent, request)
    SEEN.setdefault("request", set()).add(code)
    assert code not in NEVER
    assert agent.held() == []


def test_the_random_requests_met_more_than_one_answer() -> None:
    """The examples above reached past the first check (else they fuzzed nothing)."""
    assert grpc.StatusCode.OK in SEEN.get("request", set()) and len(SEEN["request"]) >= 2, SEEN


@given(mutated(kernel_request("c-mutated").SerializeToString()))
def test_agent_requests_mutated_on_the_wire(agent: Agent, data: bytes) -> None:
    call = agent.raw.unary_unary("/connection.NetworkService/Request")  # type: ignore[attr-defined]
    code = status(lambda: call(data, timeout=10))
    if code == grpc.StatusCode.OK:
        conn = Connection.FromString(NetworkServiceRequest.FromString(data).connection.SerializeToString())
        agent.stub.Close(conn, timeout=10)  # type: ignore[attr-defined]
    elif parses(NetworkServiceRequest, data):
        assert code not in NEVER, code
    assert agent.held() == []


@given(messages_of(Connection.DESCRIPTOR))
def test_agent_closes_of_any_shape(agent: Agent, conn: Connection) -> None:
    assert status(lambda: agent.stub.Close(conn, timeout=10)) not in NEVER  # type: ignore[attr-defined]
    assert agent.held() == []


@given(messages_of(MonitorScopeSelector.DESCRIPTOR))
def test_agent_monitors_of_any_scope(agent: Agent, selector: MonitorScopeSelector) -> None:
    stub = connection_pb2_grpc.MonitorConnectionStub(agent.raw)  # type: ignore[attr-defined]
    stream = stub.MonitorConnections(selector, timeout=5)
    first = next(iter(stream))
    assert first.type == 0  # the initial state, whatever the scope
    stream.cancel()  # type: ignore[attr-defined]


def test_agent_same_ids_at_once_and_a_huge_request(agent: Agent) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: close_if_made(agent, kernel_request("same-id")), range(16)))
    assert all(c == grpc.StatusCode.OK for c in codes), codes
    assert agent.held() == []
    huge = kernel_request("huge")
    huge.connection.labels["big"] = "x" * (MAX_MESSAGE_BYTES + 1)
    assert status(lambda: agent.stub.Request(huge, timeout=10)) == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    deep = kernel_request("deep")
    deep.connection.labels.update({f"k{i}": "é" * 50 for i in range(2000)})
    assert close_if_made(agent, deep) not in NEVER
    assert close_if_made(agent, kernel_request("after")) == grpc.StatusCode.OK  # still serving
    assert agent.held() == []


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> object:
    store = MemoryStore()
    target = f"unix:{tmp_path_factory.mktemp('registry')}/registry.sock"

    def add(server: grpc.aio.Server) -> None:
        registry_pb2_grpc.add_NetworkServiceRegistryServicer_to_server(ServiceRegistry(store), server)
        registry_pb2_grpc.add_NetworkServiceEndpointRegistryServicer_to_server(EndpointRegistry(store, 60.0), server)

    with served(add, target):
        channel = grpc.insecure_channel(target)
        yield channel, store
        channel.close()


@given(messages_of(NetworkServiceEndpoint.DESCRIPTOR), messages_of(NetworkService.DESCRIPTOR))
def test_registry_registrations_of_any_shape(
    registry: tuple[grpc.Channel, MemoryStore], nse: NetworkServiceEndpoint, ns: NetworkService
) -> None:
    channel, _ = registry
    endpoints = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)
    services = registry_pb2_grpc.NetworkServiceRegistryStub(channel)
    for call in (lambda: endpoints.Register(nse, timeout=5), lambda: endpoints.Unregister(nse, timeout=5),
                 lambda: services.Register(ns, timeout=5), lambda: services.Unregister(ns, timeout=5)):  # fmt: skip
        assert status(call) not in NEVER


@given(messages_of(NetworkServiceEndpointQuery.DESCRIPTOR), messages_of(NetworkServiceQuery.DESCRIPTOR))
def test_registry_finds_of_any_query(
    registry: tuple[grpc.Channel, MemoryStore], nq: NetworkServiceEndpointQuery, sq: NetworkServiceQuery
) -> None:
    channel, _ = registry
    nq.watch = sq.watch = False  # a watch never ends by itself
    for call in (lambda: list(registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel).Find(nq, timeout=5)),
                 lambda: list(registry_pb2_grpc.NetworkServiceRegistryStub(channel).Find(sq, timeout=5))):  # fmt: skip
        assert status(call) not in NEVER


REGISTER = ["/registry.NetworkServiceEndpointRegistry/Register", "/registry.NetworkServiceRegistry/Register"]
A_RECORD = NetworkServiceEndpoint(name="ep", network_service_names=["svc"], url="tcp://192.0.2.1:1")


@given(st.sampled_from(REGISTER), mutated(A_RECORD.SerializeToString()))
def test_registry_messages_mutated_on_the_wire(
    registry: tuple[grpc.Channel, MemoryStore], method: str, data: bytes
) -> None:
    channel, _ = registry
    code = status(lambda: channel.unary_unary(method, None, None)(data, timeout=5))
    kind = NetworkServiceEndpoint if "Endpoint" in method else NetworkService
    if parses(kind, data):
        assert code not in NEVER, code


def test_registry_still_serves_and_keeps_only_what_it_took(registry: tuple[grpc.Channel, MemoryStore]) -> None:
    channel, _ = registry
    stub = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)
    stub.Register(
        NetworkServiceEndpoint(name="after", network_service_names=["svc"], url="tcp://192.0.2.1:1"), timeout=5
    )
    names = [r.network_service_endpoint.name for r in stub.Find(NetworkServiceEndpointQuery(), timeout=5)]
    assert "after" in names
    for name in names:
        stub.Unregister(NetworkServiceEndpoint(name=name), timeout=5)
    assert list(stub.Find(NetworkServiceEndpointQuery(), timeout=5)) == []
