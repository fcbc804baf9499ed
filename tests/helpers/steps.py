"""A kit for testing chain steps in process, without root or a kernel.

- `Ledger`: every side effect a fake makes (a wire, a lease, a tunnel) is taken here
  and given back by its undo; a test ends by asserting nothing is still held.
- `Faults`: counts the fakes' operations and fails the k-th (before or after its effect).
- `Recorder`: the last step of a chain under test; records what reached it and answers.
- `FailOn`: a step that fails the n-th Request passing through it.
- Fakes of the datapath (veth, VXLAN, the name check), the netlink thread, the namespace
  resolver, the registry client and the endpoint on the far side.

What these fakes stand for is tested against the real kernel and real gRPC in
tests/integration; here they let a step's own logic (selection, retries, undo) be
driven to every branch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from google.protobuf.empty_pb2 import Empty

from nsm_agent.datapath.links import WireError
from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.datapath.veth import VethWire
from nsm_agent.datapath.vxlan import VxlanWire
from nsm_agent.decisions.wireplan import SidePlan, WirePlan
from nsm_agent.netns.resolve import NetnsRef, NetnsResolver
from nsm_agent.netns.spec import NetnsSpec
from nsm_agent.pipeline.remote_mechanism import DownstreamOffer
from nsm_agent.registry.client import RegistryClient
from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_api.registry_pb2 import NetworkService, NetworkServiceEndpoint
from nsm_common.chain.chain import Call, Next, Step
from nsm_common.errors import NsmError

T = TypeVar("T")


class Injected(Exception):
    """The failure a test injected."""


@dataclass
class Ledger:
    """Side effects still held, by (kind, key); `log` is every take and give in order."""

    held: dict[tuple[str, str], int] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def take(self, kind: str, key: str) -> None:
        self.held[(kind, key)] = self.held.get((kind, key), 0) + 1
        self.log.append(f"take {kind} {key}")

    def give(self, kind: str, key: str) -> None:
        count = self.held.get((kind, key), 0)
        assert count > 0, f"gave back {kind} {key} that was not held"
        if count == 1:
            del self.held[(kind, key)]
        else:
            self.held[(kind, key)] = count - 1
        self.log.append(f"give {kind} {key}")

    def has(self, kind: str, key: str) -> bool:
        return (kind, key) in self.held

    def outstanding(self) -> list[tuple[str, str]]:
        return sorted(self.held)


@dataclass
class Faults:
    """Fails the `at`-th operation of the fakes (1-based; 0: never), `after` its effect or before."""

    at: int = 0
    after: bool = False
    count: int = 0
    seen: list[str] = field(default_factory=list)

    def tick(
        self,
        what: str,
        effect: Callable[[], T],
        fail: Callable[[], BaseException] | None = None,
        atomic: Callable[[T], None] | None = None,
    ) -> T:
        """Run `effect`, counting it; the `at`-th one fails (as `fail()` says, else Injected).
        An operation whose real counterpart is all or nothing (a datapath call that cleans up
        after itself) is failed after its effect by undoing it first (`atomic`)."""
        self.count += 1
        self.seen.append(what)
        failing = self.count == self.at
        if failing and not self.after:
            raise (fail() if fail else Injected(f"injected before {what}"))
        result = effect()
        if failing:
            if atomic is not None:
                atomic(result)
            raise (fail() if fail else Injected(f"injected after {what}"))
        return result


# Chain ends -----------------------------------------------------------------------------
class Recorder(Step):
    """The end of a chain under test: records each Request and Close that reaches it, answers
    with `answer(request, call)` (by default the connection as it came)."""

    def __init__(self, answer: Callable[[NetworkServiceRequest, Call], Connection] | None = None) -> None:
        self.answer = answer
        self.requests: list[NetworkServiceRequest] = []
        self.calls: list[Call] = []
        self.closes: list[Connection] = []

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        seen = NetworkServiceRequest()
        seen.CopyFrom(request)
        self.requests.append(seen)
        self.calls.append(call)
        if self.answer is not None:
            return self.answer(request, call)
        reply = Connection()
        reply.CopyFrom(request.connection)
        return reply

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        seen = Connection()
        seen.CopyFrom(conn)
        self.closes.append(seen)


class FailOn(Step):
    """Fails the `n`-th Request through it (1-based) with `error`; counts Closes."""

    def __init__(self, n: int, error: BaseException | None = None) -> None:
        self.n = n
        self.error = error or NsmError(grpc.StatusCode.UNAVAILABLE, "injected")
        self.seen = 0
        self.closes = 0

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        self.seen += 1
        if self.seen == self.n:
            raise self.error
        return await nxt.request(request, call)

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        self.closes += 1
        await nxt.close(conn, call)


# The netlink thread and namespaces ------------------------------------------------------
class FakeNetlink(NetlinkThread):
    """Runs each function at once, on the caller's thread, with no sockets (the fakes need none)."""

    def __init__(self) -> None:  # no thread, no sockets
        self.trims = 0

    async def run(self, fn: Callable[[NetlinkThread], T]) -> T:
        return fn(self)

    def run_sync(self, fn: Callable[[NetlinkThread], T]) -> T:
        return fn(self)

    def trim(self) -> None:
        self.trims += 1

    def close(self) -> None:
        pass


class FakeResolver(NetnsResolver):
    """Every namespace a Request names exists; its inode is derived from its name."""

    def __init__(self) -> None:  # no host lookups
        self.refused: set[str] = set()

    def resolve(self, spec: NetnsSpec) -> NetnsRef:
        name = str(spec)
        if name in self.refused:
            raise NsmError(grpc.StatusCode.INVALID_ARGUMENT, f"network namespace {name} is refused")
        ino = spec.ino or int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)
        return NetnsRef(spec.path or f"/proc/fake/{ino}", spec.dev or 1, ino)


# The datapath -----------------------------------------------------------------------------
def _wire_error(what: str) -> Callable[[], BaseException]:
    """How the real datapath fails: a WireError, after undoing its own partial work."""
    return lambda: WireError(f"injected in {what}")


@dataclass
class FakeVeth:
    """VethOps that build nothing but keep the ledger: one `veth` per alias."""

    ledger: Ledger
    faults: Faults = field(default_factory=Faults)
    adoptable: set[str] = field(default_factory=set)  # aliases "still in the kernel" after a restart

    def _wire(self, alias: str, c_ns: NetnsRef, c_if: str, e_ns: NetnsRef, e_if: str, plan: WirePlan) -> VethWire:
        return VethWire(alias, c_ns, c_if, 10, e_ns, e_if, 11, plan, "02:00:00:00:00:01", "02:00:00:00:00:02")

    def build(
        self, nl: NetlinkThread, alias: str, c_ns: NetnsRef, c_if: str, e_ns: NetnsRef, e_if: str, plan: WirePlan
    ) -> VethWire:
        def effect() -> VethWire:
            self.ledger.take("veth", alias)
            return self._wire(alias, c_ns, c_if, e_ns, e_if, plan)

        def undo(wire: VethWire) -> None:
            self.ledger.give("veth", wire.alias)

        return self.faults.tick("veth.build", effect, _wire_error("veth.build"), undo)

    def adopt(
        self, nl: NetlinkThread, alias: str, c_ns: NetnsRef, c_if: str, e_ns: NetnsRef, e_if: str, plan: WirePlan
    ) -> VethWire | None:
        if alias not in self.adoptable:
            return None
        self.adoptable.discard(alias)
        self.ledger.take("veth", alias)
        return self._wire(alias, c_ns, c_if, e_ns, e_if, plan)

    def remove(self, nl: NetlinkThread, wire: VethWire) -> None:
        self.faults.tick("veth.remove", lambda: self.ledger.give("veth", wire.alias), _wire_error("veth.remove"))

    def alive(self, nl: NetlinkThread, wire: VethWire) -> bool:
        return self.ledger.has("veth", wire.alias)

    def update(self, nl: NetlinkThread, wire: VethWire, plan: WirePlan) -> VethWire:
        return self.faults.tick("veth.update", lambda: wire, _wire_error("veth.update"))


@dataclass
class FakeVxlan:
    """VxlanOps that build nothing but keep the ledger: one `vxlan` per alias."""

    ledger: Ledger
    faults: Faults = field(default_factory=Faults)
    built: list[tuple[str, int, str, str]] = field(default_factory=list)  # (alias, vni, local, remote)

    def build(
        self,
        nl: NetlinkThread,
        alias: str,
        ns: NetnsRef,
        ifname: str,
        vni: int,
        local: str,
        remote: str,
        port: int,
        side: SidePlan,
        mtu: int,
        mac: str = "",
    ) -> VxlanWire:
        def effect() -> VxlanWire:
            self.ledger.take("vxlan", alias)
            self.built.append((alias, vni, local, remote))
            return VxlanWire(alias, ns, ifname, 20, vni, side, mtu, "02:00:00:00:00:03")

        def undo(wire: VxlanWire) -> None:
            self.ledger.give("vxlan", wire.alias)

        return self.faults.tick("vxlan.build", effect, _wire_error("vxlan.build"), undo)

    def adopt(
        self, nl: NetlinkThread, alias: str, ns: NetnsRef, ifname: str, vni: int, side: SidePlan, mtu: int
    ) -> VxlanWire | None:
        return None

    def remove(self, nl: NetlinkThread, wire: VxlanWire) -> None:
        self.faults.tick("vxlan.remove", lambda: self.ledger.give("vxlan", wire.alias), _wire_error("vxlan.remove"))

    def alive(self, nl: NetlinkThread, wire: VxlanWire) -> bool:
        return self.ledger.has("vxlan", wire.alias)

    def update(self, nl: NetlinkThread, wire: VxlanWire, side: SidePlan, mtu: int) -> VxlanWire:
        return self.faults.tick("vxlan.update", lambda: wire, _wire_error("vxlan.update"))


def no_name_in_use(nl: NetlinkThread, ns: NetnsRef, name: str, unless_alias: str) -> bool:
    return False


# The registry and the far end -------------------------------------------------------------
class FakeRegistry(RegistryClient):
    """The registry's answers from dicts (no channel)."""

    def __init__(self, services: list[NetworkService], endpoints: list[NetworkServiceEndpoint]) -> None:
        self.address = "fake registry"  # type: ignore[assignment]
        self.services_by_name = {s.name: s for s in services}
        self.endpoint_records = endpoints
        self.down = False
        self.cache = None

    async def find_service(self, name: str) -> NetworkService | None:
        if self.down:
            raise NsmError(grpc.StatusCode.UNAVAILABLE, "registry down")
        return self.services_by_name.get(name)

    async def find_endpoints(
        self, query: NetworkServiceEndpoint, attempts: int | None = None
    ) -> list[NetworkServiceEndpoint]:
        if self.down:
            raise NsmError(grpc.StatusCode.UNAVAILABLE, "registry down")
        out = []
        for ep in self.endpoint_records:
            if query.name and ep.name != query.name:
                continue
            if not set(query.network_service_names) <= set(ep.network_service_names):
                continue
            out.append(ep)
        return out


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


def kernel_answer(request: NetworkServiceRequest, ns: str = "/var/run/netns/ep") -> Connection:
    """What an endpoint answers: the connection with addresses and its KERNEL mechanism."""
    reply = Connection()
    reply.CopyFrom(request.connection)
    ip = reply.context.ip_context
    if not ip.src_ip_addrs:
        ip.src_ip_addrs.append("10.0.0.1/32")
        ip.dst_ip_addrs.append("10.0.0.2/32")
    offered = [m for m in request.mechanism_preferences if m.cls == "REMOTE"]
    if offered:  # the endpoint's agent: it agrees to the first offer, filling in its side
        mech = Mechanism()
        mech.CopyFrom(offered[0])
        mech.parameters.update({"dst_ip": "192.0.2.2", "dst_port": mech.parameters.get("src_port", "4789")})
        reply.mechanism.CopyFrom(mech)
    else:
        reply.mechanism.CopyFrom(Mechanism(cls="LOCAL", type="KERNEL", parameters={"inodeURL": f"file://{ns}"}))
    return reply


@dataclass
class FakeEndpoint:
    """The next hop ConnectEndpoint dials: each new connection id takes a `lease` (an endpoint's
    addresses, or another agent's tunnel), Close gives it back. `answer` shapes the reply."""

    ledger: Ledger
    faults: Faults = field(default_factory=Faults)
    answer: Callable[[NetworkServiceRequest], Connection] = kernel_answer
    fail_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    dialled: list[str] = field(default_factory=list)
    requests: list[NetworkServiceRequest] = field(default_factory=list)
    refusing: set[str] = field(default_factory=set)  # URLs whose endpoint answers RESOURCE_EXHAUSTED

    def dial(self, url: str) -> FakeEndpoint.Stub:
        self.dialled.append(url)
        return FakeEndpoint.Stub(self, url)

    @dataclass
    class Stub:
        far: FakeEndpoint
        url: str

        async def Request(
            self, request: NetworkServiceRequest, timeout: float | None = None, **_: object
        ) -> Connection:
            far = self.far
            far.requests.append(request)

            def effect() -> Connection:
                if self.url in far.refusing:
                    raise rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "no addresses left")
                if not far.ledger.has("lease", request.connection.id):
                    far.ledger.take("lease", request.connection.id)
                return far.answer(request)

            return far.faults.tick(
                f"endpoint.Request {self.url}", effect, lambda: rpc_error(far.fail_code, "injected at the endpoint")
            )

        async def Close(self, request: Connection, timeout: float | None = None, **_: object) -> Empty:
            far = self.far

            def effect() -> Empty:
                if far.ledger.has("lease", request.id):
                    far.ledger.give("lease", request.id)
                return Empty()

            return far.faults.tick(
                f"endpoint.Close {self.url}", effect, lambda: rpc_error(far.fail_code, "injected at the endpoint")
            )


def as_sent(request: NetworkServiceRequest, call: Call) -> Connection:
    """What the next hop answers to the Request ConnectEndpoint would send it: the mechanisms
    offered are the call's DownstreamOffer (KERNEL when it offers none)."""
    sent = NetworkServiceRequest()
    sent.CopyFrom(request)
    offer = call.get(DownstreamOffer)
    if offer is not None and offer.mechanisms:
        del sent.mechanism_preferences[:]
        sent.mechanism_preferences.extend(offer.mechanisms)
    return kernel_answer(sent)


def endpoint(name: str, url: str, service: str = "svc") -> NetworkServiceEndpoint:
    return NetworkServiceEndpoint(name=name, url=url, network_service_names=[service])


def kernel_request(conn_id: str = "c1", service: str = "svc", ns: str = "/var/run/netns/pod") -> NetworkServiceRequest:
    """A pod's Request as it reaches the agent's chain (path already entered by the caller)."""
    req = NetworkServiceRequest()
    req.connection.id = conn_id
    req.connection.network_service = service
    req.mechanism_preferences.append(
        Mechanism(cls="LOCAL", type="KERNEL", parameters={"inodeURL": f"file://{ns}", "name": "nsm-1"})
    )
    return req
