"""The tunnel steps toward another domain through NAT (no root): the node's learned mapping
and its relay go into the WIREGUARD offer and answer, the peer's path is followed from what
was agreed and forgotten with the last connection, and a bad relay parameter is refused
with nothing held. WireGuard is a recording stand-in here (its kernel side runs in
tests/integration/test_nat_traversal.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import grpc
import pytest

from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.datapath.tunnels import Underlay, VniBook
from nsm_agent.datapath.wireguard import Peer, WireGuardDevice
from nsm_agent.decisions.traversal import RelayRef
from nsm_agent.pipeline.remote_mechanism import RemoteMechanismClient, RemoteMechanismServer, TunnelKinds
from nsm_agent.pipeline.select import Chosen
from nsm_agent.pipeline.validate import ValidateRequest
from nsm_agent.state.keys import load_or_create
from nsm_agent.traversal.messages import Keys
from nsm_agent.traversal.paths import Traversal
from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Call, Chain
from nsm_common.errors import NsmError
from tests.helpers.loopback_port import LoopbackPort
from tests.helpers.steps import FakeNetlink, Recorder, as_sent, endpoint, kernel_request

RELAY = RelayRef(("203.0.113.19", 51800), base64.b64encode(bytes(range(32))).decode())
PEER_KEY = base64.b64encode(bytes(range(1, 33))).decode()
OTHER = base64.b64encode(bytes([0] * 31 + [9])).decode()  # sorts before RELAY's key
FAR = endpoint("ep@cluster2", "tcp://203.0.113.20:5101")


def remote_call() -> Call:
    call = Call()
    call.put(Chosen(FAR, FAR.url, True))
    return call


class RecordingWireGuard(WireGuardDevice):
    """Peers kept in memory: no device, no `wg`."""

    async def use_peer(self, netlink: NetlinkThread, conn_id: str, public_key: str, ip: str, port: int) -> str:
        self.peers.setdefault(public_key, Peer(public_key, ip, port)).users.add(conn_id)
        return "fd00::2"

    async def release(self, netlink: NetlinkThread, conn_id: str, public_key: str) -> None:
        peer = self.peers.get(public_key)
        if peer is not None:
            peer.users.discard(conn_id)
            if not peer.users:
                del self.peers[public_key]


def nat_kinds(tmp_path: Path) -> tuple[TunnelKinds, Traversal, LoopbackPort]:
    keys = load_or_create(tmp_path)
    wg = RecordingWireGuard(keys, 51821, 1420)
    port = LoopbackPort()

    async def set_endpoint(_key: str, _addr: tuple[str, int], _now: bool) -> None:
        return None

    async def relays() -> list[RelayRef]:
        return [RELAY]

    traversal = Traversal(Keys(keys.private_path.read_text().strip()), lambda: port, set_endpoint, relays)  # type: ignore[arg-type,return-value]
    traversal.relays = [RELAY]
    traversal.mappings[RELAY.key] = ("203.0.113.10", 40001)  # as the domain's reflector would have said
    k = TunnelKinds(FakeNetlink(), Underlay("10.0.0.1", 1500), VniBook(4789, scan=lambda nl, p: set()), wg,
                    ["WIREGUARD"], traversal=traversal)  # fmt: skip
    return k, traversal, port


def crossing_offer(relay: dict[str, str]) -> NetworkServiceRequest:
    req = kernel_request("s1")
    req.connection.network_service = "svc@cluster1"
    del req.mechanism_preferences[:]
    params = {"src_ip": "203.0.113.20", "src_port": "51820", "src_public_key": PEER_KEY, "vni": "4242", "MTU": "1370",
              **relay}  # fmt: skip
    req.mechanism_preferences.append(Mechanism(cls="REMOTE", type="WIREGUARD", parameters=params))
    return req


def test_the_offer_toward_another_domain_carries_the_mapping_and_the_relay(tmp_path: Path) -> None:
    k, _, port = nat_kinds(tmp_path)
    try:
        inside = k.my_side("WIREGUARD", 7, "src")
        assert (inside["src_ip"], inside["src_port"]) == ("10.0.0.1", "51821") and "src_relay" not in inside
        across = k.my_side("WIREGUARD", 7, "src", crossing=True)
        assert (across["src_ip"], across["src_port"]) == ("203.0.113.10", "40001")
        assert across["src_relay"] == "203.0.113.19:51800" and across["src_relay_key"] == RELAY.key
    finally:
        port.close()


async def test_the_endpoint_side_follows_the_peer_by_the_clients_relay_and_forgets_it(tmp_path: Path) -> None:
    k, traversal, port = nat_kinds(tmp_path)
    try:
        chain = Chain([ValidateRequest(("WIREGUARD",)), RemoteMechanismServer(k), Recorder()])
        reply = await chain.request(crossing_offer({"src_relay": "203.0.113.29:51800", "src_relay_key": OTHER}))
        params = reply.mechanism.parameters
        assert (params["dst_ip"], params["dst_port"]) == ("203.0.113.10", "40001")  # the mapping, not 10.0.0.1
        followed = traversal.peers[PEER_KEY].path
        assert followed.told == ("203.0.113.20", 51820)
        # both relays named, by key (the client's and this node's own)
        assert followed.relays == (RelayRef(("203.0.113.29", 51800), OTHER), RELAY)
        await chain.close(Connection(id="s1"))
        assert PEER_KEY not in traversal.peers and k.vnis.held == {}
    finally:
        port.close()


@pytest.mark.parametrize(
    ("relay", "message"),
    [
        ({"src_relay": "somewhere:51800", "src_relay_key": RELAY.key}, "src_relay='somewhere:51800' is not IP:PORT"),
        ({"src_relay": "203.0.113.29:51800"}, "src_relay_key is not a 32-byte WireGuard key"),
        ({"src_relay": "127.0.0.1:51800", "src_relay_key": RELAY.key}, "src_relay='127.0.0.1:51800' is a loopback"),
        ({"src_relay": "[ff02::1]:51800", "src_relay_key": RELAY.key}, "is a loopback, unspecified, multicast"),
        ({"src_relay": "0.0.0.0:51800", "src_relay_key": RELAY.key}, "is a loopback, unspecified"),
    ],
)
async def test_a_bad_relay_is_refused_and_nothing_is_held(tmp_path: Path, relay: dict[str, str], message: str) -> None:
    k, traversal, port = nat_kinds(tmp_path)
    try:
        chain = Chain([ValidateRequest(("WIREGUARD",)), RemoteMechanismServer(k), Recorder()])
        with pytest.raises(NsmError) as caught:
            await chain.request(crossing_offer(relay))
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert message in caught.value.message
        assert k.vnis.held == {} and traversal.peers == {} and k.wireguard is not None and k.wireguard.peers == {}
    finally:
        port.close()


async def test_the_client_side_follows_the_endpoints_answer(tmp_path: Path) -> None:
    k, traversal, port = nat_kinds(tmp_path)
    try:

        def answer(req: NetworkServiceRequest, call: Call) -> Connection:
            conn = as_sent(req, call)
            conn.network_service = "svc@cluster2"
            mech = conn.mechanism
            mech.parameters.update({"dst_ip": "203.0.113.20", "dst_port": "51820", "dst_public_key": PEER_KEY})
            return conn

        step = RemoteMechanismClient(k, ["WIREGUARD"])
        req = kernel_request()
        req.connection.network_service = "svc@cluster2"
        await Chain([step, Recorder(answer)]).request(req, remote_call())
        followed = traversal.peers[PEER_KEY].path
        assert followed.told == ("203.0.113.20", 51820) and followed.relays == (RELAY,)  # its own, offered
        await Chain([step, Recorder(answer)]).close(Connection(id="c1"))
        assert traversal.peers == {}
    finally:
        port.close()
