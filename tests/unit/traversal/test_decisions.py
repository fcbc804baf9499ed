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
    agreed_relay,
    decide,
    parse_address,
    parse_relay,
    relay_params,
)
from nsm_common.errors import NsmError

KEY = base64.b64encode(bytes(range(32))).decode()
RELAY = RelayRef(("203.0.113.19", 51800), KEY)


def test_a_ping_heard_makes_the_path_direct_at_once() -> None:
    path = PeerPath(told=("203.0.113.20", 51820), relay=RELAY, since=0.0)
    assert decide(path, 0.5) is Mode.PUNCHING
    path.heard, path.heard_at = ("203.0.113.20", 51820), 0.6
    assert decide(path, 0.7) is Mode.DIRECT


def test_no_ping_heard_goes_to_the_relay_once_paired_and_after_punch_for() -> None:
    path = PeerPath(told=("203.0.113.20", 51820), relay=RELAY, since=0.0)
    assert path.wants_relay(PUNCH_FOR / 2)  # asks early, so the pairing is there in time
    path.paired_at = 1.5
    assert decide(path, PUNCH_FOR - 0.1) is Mode.PUNCHING
    assert decide(path, PUNCH_FOR + 0.1) is Mode.RELAYED
    path.mode = Mode.RELAYED
    assert path.endpoint() == RELAY.address
    # Without a pairing (the peer never asked, or no relay) it keeps punching.
    unpaired = PeerPath(told=("203.0.113.20", 51820), relay=RELAY, since=0.0)
    assert decide(unpaired, 10 * PUNCH_FOR) is Mode.PUNCHING
    norelay = PeerPath(told=("203.0.113.20", 51820), relay=None, since=0.0)
    assert not norelay.wants_relay(100.0)
    assert decide(norelay, 100.0) is Mode.PUNCHING


def test_relayed_goes_back_to_direct_when_a_ping_gets_through() -> None:
    path = PeerPath(told=("203.0.113.20", 51820), relay=RELAY, mode=Mode.RELAYED, since=0.0, paired_at=10.0)
    path.relay_peer = ("203.0.113.20", 40001)
    assert ("203.0.113.20", 40001) in path.candidates()  # pings go where the relay sees the peer too
    path.heard, path.heard_at = ("203.0.113.20", 40001), 11.0
    assert decide(path, 11.1) is Mode.DIRECT
    path.mode = Mode.DIRECT
    assert path.endpoint() == ("203.0.113.20", 40001)  # where it was heard, not where it was told


def test_a_silent_direct_path_is_relayed_meanwhile_or_punched_again() -> None:
    path = PeerPath(told=("203.0.113.20", 51820), relay=RELAY, mode=Mode.DIRECT, heard_at=0.0)
    path.heard = path.told
    assert decide(path, DEAD_AFTER) is Mode.DIRECT
    assert path.wants_relay(DEAD_AFTER / 2 + 0.1)  # pairing asked before the path is declared dead
    path.paired_at = DEAD_AFTER
    assert decide(path, DEAD_AFTER + 0.1) is Mode.RELAYED
    path.paired_at = -100.0
    assert decide(path, DEAD_AFTER + 0.1) is Mode.PUNCHING


def test_relay_parameters_round_trip_and_the_clients_wins() -> None:
    other = RelayRef(("2001:db8:113::29", 51800), KEY)
    params = {**relay_params(RELAY, "src"), **relay_params(other, "dst")}
    assert params["dst_relay"] == "[2001:db8:113::29]:51800"
    assert parse_relay(params, "dst") == other
    assert agreed_relay(params) == RELAY
    assert agreed_relay(relay_params(other, "dst")) == other
    assert agreed_relay({}) is None


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
