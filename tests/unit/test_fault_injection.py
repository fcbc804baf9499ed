"""Fault injection over the agent's real chain, in process (no root).

The chain is the agent's own step list (`agent_steps`, what `nsm-agent` serves) with the
datapath, the registry and the far end replaced by the fakes of tests/helpers/steps.py.
For each way a Request can go (a local endpoint over a veth; a remote one over VXLAN, a
VNI proposal refused once; a fail-over to a second endpoint), every operation the fakes
count is failed in turn, before and after its effect, and so is every step on its way
out. Each time the caller must get a clean error (an NsmError, as the gRPC server turns
into a status) and nothing may be held: no wire, no endpoint lease, no VNI, no journal
entry, no per-connection state in any step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from pyroute2.netlink.exceptions import NetlinkError

from nsm_agent.datapath.links import WireError
from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.datapath.tunnels import Underlay, VniBook
from nsm_agent.pipeline.connect import ConnectEndpoint
from nsm_agent.pipeline.remote_mechanism import TunnelKinds
from nsm_agent.pipeline.select import Locator
from nsm_agent.pipeline.steps import Datapath, agent_steps
from nsm_agent.registry.local_endpoints import LocalEndpoints
from nsm_agent.state.journal import JournalStore
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_api.registry_pb2 import NetworkService, NetworkServiceEndpoint
from nsm_common.chain.begin import Begin
from nsm_common.chain.chain import Call, Chain, Next, Step
from nsm_common.chain.monitor import ConnectionEvents
from nsm_common.errors import NsmError
from tests.helpers.steps import (
    FakeEndpoint,
    FakeNetlink,
    FakeRegistry,
    FakeResolver,
    FakeVeth,
    FakeVxlan,
    Faults,
    Injected,
    Ledger,
    endpoint,
    kernel_answer,
    kernel_request,
    no_name_in_use,
)

LOCAL = endpoint("ep-local", "unix:///fake/ep-local.sock")
REMOTE = endpoint("ep-remote", "tcp://192.0.2.2:5001")
SECOND = endpoint("ep-second", "unix:///fake/ep-second.sock")


class FailOnTheWayOut(Step):
    """Wraps a step: once its Request returned (its side effects done), raise."""

    def __init__(self, inner: Step) -> None:
        self.inner = inner

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        await self.inner.request(request, call, nxt)
        raise NsmError(grpc.StatusCode.INTERNAL, f"injected after {type(self.inner).__name__}")

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        await self.inner.close(conn, call, nxt)


@dataclass
class World:
    chain: Chain
    steps: list[Step]
    ledger: Ledger
    faults: Faults
    vnis: VniBook
    journal: JournalStore
    connect: ConnectEndpoint

    def leftovers(self) -> list[str]:
        out = [f"{kind} {key}" for kind, key in self.ledger.outstanding()]
        out += [f"vni {vni}" for vni in self.vnis.held]
        out += [f"journal {e.conn_id}" for e in self.journal.entries()]
        for step in self.steps:
            for attr in ("_records", "_sides", "_chosen", "_downstream", "wires", "_agreed", "_locks"):
                held = getattr(step, attr, None)
                if held:
                    out.append(f"{type(step).__name__}.{attr} {sorted(held)}")
        return out


def world(
    tmp_path: Path,
    endpoints: list[NetworkServiceEndpoint],
    faults: Faults,
    refuse_first_vni: bool = False,
    far_fails: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
) -> World:
    ledger = Ledger()
    netlink = FakeNetlink()
    taken_once = {"done": not refuse_first_vni}

    def scan(nl: NetlinkThread, port: int) -> set[int]:
        def effect() -> set[int]:
            return set()

        return faults.tick("vni scan", effect, lambda: NetlinkError(16, "injected in the VNI scan"))

    vnis = VniBook(4789, scan=scan)
    kinds = TunnelKinds(netlink, Underlay("192.0.2.1", 1500), vnis, None, ["VXLAN"])

    def answer(request: NetworkServiceRequest) -> Connection:
        reply = kernel_answer(request)
        if reply.mechanism.cls == "REMOTE" and not taken_once["done"]:
            taken_once["done"] = True  # the other node picks a VNI that this one holds
            held = next(iter(vnis.held), 0)
            reply.mechanism.parameters["vni"] = str(held + 100)
            vnis.held[held + 100] = "someone-else"
        return reply

    far = FakeEndpoint(ledger, faults, answer, fail_code=far_fails)
    if SECOND in endpoints:  # the fail-over case: the first endpoint is out of addresses
        far.refusing.add(LOCAL.url)
    state = tmp_path / "state"
    journal = JournalStore(state)
    connect = ConnectEndpoint(5.0, None, dial=far.dial)
    steps = agent_steps(
        name="node1",
        default_lifetime=600,
        max_lifetime=600,
        netlink=netlink,
        resolver=FakeResolver(),
        registry=FakeRegistry([NetworkService(name="svc", payload="IP")], endpoints),
        locator=Locator({"unix:///agent.sock"}, LocalEndpoints(state)),
        kinds=kinds,
        events=ConnectionEvents(),
        journal=journal,
        begin=Begin(held_elsewhere=journal.holds),
        connect=connect,
        datapath=Datapath(FakeVeth(ledger, faults), FakeVxlan(ledger, faults), no_name_in_use),
    )
    return World(Chain(steps), steps, ledger, faults, vnis, journal, connect)


async def attempt(w: World) -> Exception | None:
    try:
        await w.chain.request(kernel_request("c1"))
    except Exception as exc:
        await w.connect.settle()
        return exc
    await w.connect.settle()
    return None


def clean(w: World) -> list[str]:
    w.vnis.held = {v: c for v, c in w.vnis.held.items() if c != "someone-else"}
    return w.leftovers()


SCENARIOS: dict[str, tuple[list[NetworkServiceEndpoint], bool]] = {
    "local veth": ([LOCAL], False),
    "remote VXLAN, a VNI refused once": ([REMOTE], True),
    "fail-over from an exhausted endpoint to the next": ([LOCAL, SECOND], False),
}


async def count_operations(tmp_path: Path, endpoints: list[NetworkServiceEndpoint], refuse: bool) -> int:
    w = world(tmp_path, endpoints, Faults(), refuse)
    assert await attempt(w) is None
    ops = w.faults.count
    assert ops > 0
    await w.chain.close(Connection(id="c1"))
    await w.connect.settle()
    assert clean(w) == [], "a Close must leave nothing"
    return ops


@pytest.mark.parametrize("far_fails", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_every_fake_operation_failing_leaves_nothing(
    tmp_path: Path, scenario: str, far_fails: grpc.StatusCode
) -> None:
    """The far end failing UNAVAILABLE (never reached: tried once more) or DEADLINE_EXCEEDED
    (it may have acted: closed there)."""
    endpoints, refuse = SCENARIOS[scenario]
    ops = await count_operations(tmp_path / "count", endpoints, refuse)
    survived = 0
    for k in range(1, ops + 1):
        for after in (False, True):
            w = world(tmp_path / f"k{k}-{after}", endpoints, Faults(at=k, after=after), refuse, far_fails)
            error = await attempt(w)
            where = f"{scenario}: operation {k} of {ops} ({w.faults.seen[k - 1]}), {'after' if after else 'before'}"
            if error is None:
                # A failure the chain survives (a retry, the next candidate, a Close that failed
                # after the endpoint had let go): then a Close must leave nothing either.
                survived += 1
                await w.chain.close(Connection(id="c1"))
                await w.connect.settle()
            else:
                assert isinstance(error, NsmError | NetlinkError), f"{where}: {error!r} is no clean error"
                assert not isinstance(error, Injected | WireError), where
            assert clean(w) == [], f"{where}: left {clean(w)}"
    assert survived < 2 * ops  # most injected failures reach the caller


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_every_step_failing_on_its_way_out_leaves_nothing(tmp_path: Path, scenario: str) -> None:
    endpoints, refuse = SCENARIOS[scenario]
    base = world(tmp_path / "probe", endpoints, Faults(), refuse)
    begin_at = next(i for i, s in enumerate(base.steps) if isinstance(s, Begin))
    for i in range(len(base.steps)):
        w = world(tmp_path / f"step{i}", endpoints, Faults(), refuse)
        name = type(w.steps[i]).__name__
        begin = w.steps[begin_at]
        assert isinstance(begin, Begin)
        w.steps[i] = FailOnTheWayOut(w.steps[i])
        w.chain = Chain(w.steps)
        error = await attempt(w)
        assert isinstance(error, NsmError), f"{scenario}: after {name}: {error!r}"
        if i <= begin_at:
            # Above Begin nothing but the reply is lost: Begin holds the connection, and closes
            # it when its caller's lifetime runs out or on the caller's Close, as here.
            assert "c1" in begin._records
            await w.chain.close(Connection(id="c1"))
            await w.connect.settle()
        w.steps[i] = w.steps[i].inner  # type: ignore[attr-defined]
        assert clean(w) == [], f"{scenario}: failing after {name} left {clean(w)}"
