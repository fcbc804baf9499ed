"""Path decisions (pure): punching, direct, relayed, and back; relay parameters."""

from __future__ import annotations

import base64

import pytest

from nsm_agent.decisions.traversal import (
    DEAD_AFTER,
    PUNCH_FOR,
    Mode,
    PeerPath,
    RelayRef,
    agreed_relays,
    carried_path,
    decide,
    handshake_now,
    parse_address,
    parse_relay,
    relay_params,
)
from nsm_common.errors import NsmError

KEY = base64.b64encode(bytes(range(32))).decode()
RELAY = RelayRef(("203.0.113.19", 51800), KEY)


def test_a_ping_heard_makes_the_path_direct_at_once() -> None:
    path = PeerPath(told=("203.0.113.20", 51820), relays=(RELAY,), since=0.0)
    assert decide(path, 0.5) is Mode.PUNCHING
    path.heard, path.heard_at = ("203.0.113.20", 51820), 0.6
    assert decide(path, 0.7) is Mode.DIRECT


def test_no_ping_heard_goes_to_the_relay_once_paired_and_after_punch_for() -> None:
    path = PeerPath(told=("203.0.113.20", 51820), relays=(RELAY,), since=0.0)
    assert path.wants_relay(PUNCH_FOR / 2)  # asks early, so the pairing is there in time
    path.paired[RELAY.key] = (1.5, ("203.0.113.20", 40001))
    assert decide(path, PUNCH_FOR - 0.1) is Mode.PUNCHING
    assert decide(path, PUNCH_FOR + 0.1) is Mode.RELAYED
    path.mode = Mode.RELAYED
    assert path.endpoint(PUNCH_FOR + 0.1) == RELAY.address
    # Without a pairing (the peer never asked, or no relay) it keeps punching.
    unpaired = PeerPath(told=("203.0.113.20", 51820), relays=(RELAY,), since=0.0)
    assert decide(unpaired, 10 * PUNCH_FOR) is Mode.PUNCHING
    norelay = PeerPath(told=("203.0.113.20", 51820), since=0.0)
    assert not norelay.wants_relay(100.0)
    assert decide(norelay, 100.0) is Mode.PUNCHING


def test_a_relay_that_stops_pairing_gives_way_to_the_next() -> None:
    second = RelayRef(("203.0.113.29", 51800), base64.b64encode(bytes(range(1, 33))).decode())
    path = PeerPath(told=("203.0.113.20", 51820), relays=(RELAY, second), mode=Mode.RELAYED)
    path.paired = {RELAY.key: (10.0, ("203.0.113.20", 1)), second.key: (12.0, ("203.0.113.20", 2))}
    assert path.endpoint(12.0) == RELAY.address  # the first, while it pairs
    assert path.endpoint(10.0 + DEAD_AFTER + 1) == second.address  # the first died: its answers stopped
    assert decide(path, 12.0 + DEAD_AFTER + 1) is Mode.PUNCHING  # neither pairs: punch on


def test_relayed_goes_back_to_direct_when_a_ping_gets_through() -> None:
    path = PeerPath(told=("203.0.113.20", 51820), relays=(RELAY,), mode=Mode.RELAYED, since=0.0)
    path.paired[RELAY.key] = (10.0, ("203.0.113.20", 40001))
    assert ("203.0.113.20", 40001) in path.candidates()  # pings go where the relay sees the peer too
    path.heard, path.heard_at = ("203.0.113.20", 40001), 11.0
    assert decide(path, 11.1) is Mode.DIRECT
    path.mode = Mode.DIRECT
    assert path.endpoint(11.1) == ("203.0.113.20", 40001)  # where it was heard, not where it was told


def test_a_silent_direct_path_is_relayed_meanwhile_or_punched_again() -> None:
    path = PeerPath(told=("203.0.113.20", 51820), relays=(RELAY,), mode=Mode.DIRECT, heard_at=0.0)
    path.heard = path.told
    assert decide(path, DEAD_AFTER) is Mode.DIRECT
    assert path.wants_relay(DEAD_AFTER / 2 + 0.1)  # pairing asked before the path is declared dead
    path.paired[RELAY.key] = (DEAD_AFTER, path.told)
    assert decide(path, DEAD_AFTER + 0.1) is Mode.RELAYED
    path.paired[RELAY.key] = (-100.0, path.told)
    assert decide(path, DEAD_AFTER + 0.1) is Mode.PUNCHING


def test_relay_parameters_round_trip_and_both_ends_ask_the_same_relays() -> None:
    other = RelayRef(("2001:db8:113::29", 51800), base64.b64encode(bytes(range(2, 34))).decode())
    params = {**relay_params(RELAY, "src"), **relay_params(other, "dst")}
    assert params["dst_relay"] == "[2001:db8:113::29]:51800"
    assert parse_relay(params, "dst") == other
    # By key, whoever is the client: a connection each way between two nodes asks the same.
    swapped = {**relay_params(other, "src"), **relay_params(RELAY, "dst")}
    assert agreed_relays(params) == agreed_relays(swapped) == tuple(sorted((RELAY, other), key=lambda r: r.key))
    assert agreed_relays(relay_params(other, "dst")) == (other,)
    assert agreed_relays({**relay_params(RELAY, "src"), **relay_params(RELAY, "dst")}) == (RELAY,)
    assert agreed_relays({}) == ()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"src_relay": "nowhere:1", "src_relay_key": KEY}, "is not IP:PORT"),
        ({"src_relay": "203.0.113.1", "src_relay_key": KEY}, "is not IP:PORT"),
        ({"src_relay": "203.0.113.1:0", "src_relay_key": KEY}, "no port"),
        ({"src_relay": "203.0.113.1:5"}, "src_relay_key is not a 32-byte"),
        ({"src_relay": "203.0.113.1:5", "src_relay_key": "AAAA"}, "src_relay_key is not a 32-byte"),
    ],
)
def test_bad_relay_parameters_are_named(params: dict[str, str], message: str) -> None:
    with pytest.raises(NsmError, match=message):
        parse_relay(params, "src")


def test_addresses() -> None:
    assert parse_address("[fd00::1]:7", "x") == ("fd00::1", 7)
    assert parse_address("10.0.0.1:65535", "x") == ("10.0.0.1", 65535)
    for nowhere in ("127.0.0.1:7", "[::1]:7", "0.0.0.0:7", "224.0.0.1:7", "[fe80::1]:7"):
        with pytest.raises(NsmError, match="loopback, unspecified, multicast or link-local"):
            parse_address(nowhere, "dst_relay")


def test_a_path_carried_on_by_a_restart_starts_where_wireguard_sends() -> None:
    """After an agent restart the device still sends to the relay (or where the peer was
    heard): the path starts there, so its first tick does not move a working tunnel back to
    the told mapping, and lapses in DEAD_AFTER unless the relay (or the peer) answers."""
    told = ("203.0.113.20", 51820)
    relayed = carried_path(told, (RELAY,), RELAY.address, 10.0)
    assert decide(relayed, 10.1) is Mode.RELAYED and relayed.endpoint(10.1) == RELAY.address
    assert relayed.wants_relay(10.1)  # its pairing is asked again at once
    assert decide(relayed, 10.0 + DEAD_AFTER + 0.1) is Mode.PUNCHING  # never confirmed
    direct = carried_path(told, (RELAY,), ("203.0.113.20", 40007), 10.0)
    assert decide(direct, 10.1) is Mode.DIRECT and direct.endpoint(10.1) == ("203.0.113.20", 40007)
    assert decide(direct, 10.0 + DEAD_AFTER + 0.1) is not Mode.DIRECT  # never heard there
    as_told = carried_path(told, (), told, 10.0)
    assert as_told.mode is Mode.PUNCHING and as_told.endpoint(10.1) == told


def test_a_handshake_is_started_at_once_only_onto_a_relay_and_by_the_lower_key() -> None:
    low, high = bytes(32), bytes([1]) * 32
    assert handshake_now(Mode.RELAYED, low, high)
    assert not handshake_now(Mode.RELAYED, high, low)  # the other end's initiation is awaited
    for mode in (Mode.DIRECT, Mode.PUNCHING):  # a handshake may be under way there
        assert not handshake_now(mode, low, high)
