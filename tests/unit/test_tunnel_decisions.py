"""REMOTE mechanism parameters, VNI choice, MTUs, WireGuard keys (no root needed)."""

import base64
import os
import random
import stat
from pathlib import Path

import pytest

from nsm_agent.decisions.tunnel import (
    REJECT_AFTER_TIME,
    VNI_MAX,
    VXLAN_OVERHEAD,
    WIREGUARD_OVERHEAD,
    device_name,
    has_session,
    inner_address,
    parse_public_key,
    parse_vxlan,
    pick_vni,
    pod_mtu,
)
from nsm_agent.state.keys import load_or_create, public_of
from nsm_common.errors import NsmError

GOOD = {"src_ip": "192.0.2.1", "dst_ip": "192.0.2.2", "src_port": "4789", "dst_port": "4789", "vni": "5000"}


def test_good_vxlan_parameters() -> None:
    p = parse_vxlan(GOOD, need_dst=True)
    assert (str(p.src_ip), str(p.dst_ip), p.vni, p.src_port) == ("192.0.2.1", "192.0.2.2", 5000, 4789)
    assert parse_vxlan({"src_ip": "2001:db8::1"}, need_dst=False).dst_port == 4789


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"src_ip": ""}, "src_ip is missing"),
        ({"dst_ip": "300.1.1.1"}, "not an IP address"),
        ({"dst_ip": "2001:db8::2"}, "different families"),
        ({"vni": str(VNI_MAX + 1)}, "vni"),
        ({"vni": "0"}, "vni"),
        ({"src_port": "70000"}, "src_port"),
        ({"dst_port": "x"}, "dst_port"),
        ({"MTU": "20"}, "MTU"),
    ],
)
def test_bad_vxlan_parameters(change: dict[str, str], words: str) -> None:
    with pytest.raises(NsmError) as info:
        parse_vxlan({**GOOD, **change}, need_dst=True)
    assert words in info.value.message


def test_public_keys() -> None:
    key = base64.b64encode(bytes(32)).decode()
    assert parse_public_key({"k": key}, "k") == bytes(32)
    for bad, words in (("", "missing"), ("not base64!", "base64"), (base64.b64encode(bytes(31)).decode(), "31 bytes")):
        with pytest.raises(NsmError) as info:
            parse_public_key({"k": bad}, "k")
        assert words in info.value.message


def test_vni_choice() -> None:
    assert pick_vni({1, 2}, proposal=7) == 7
    rng = random.Random(1)
    chosen = pick_vni({7}, proposal=7, rng=rng)
    assert chosen != 7 and 4097 <= chosen <= VNI_MAX


def test_mtus() -> None:
    assert pod_mtu(1500, 4, VXLAN_OVERHEAD) == 1450
    assert pod_mtu(1500, 6, VXLAN_OVERHEAD) == 1430
    assert pod_mtu(1500, 4, WIREGUARD_OVERHEAD) == 1440
    assert pod_mtu(9000, 6, WIREGUARD_OVERHEAD) == 8920


def test_key_pair_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    first = load_or_create(tmp_path)
    assert stat.S_IMODE(os.stat(first.private_path).st_mode) == 0o600
    again = load_or_create(tmp_path)
    assert again.public == first.public
    assert public_of(first.private_path.read_text().strip()) == first.public
    assert len(base64.b64decode(first.public)) == 32
    assert inner_address(first.public).is_private and str(inner_address(first.public)).startswith("fd")
    assert len(device_name(first.public)) <= 15
    (tmp_path / "x").mkdir()
    other = load_or_create(tmp_path / "x")
    assert other.public != first.public and inner_address(other.public) != inner_address(first.public)


def test_a_wireguard_peer_has_a_session_only_after_a_handshake_and_until_its_keys_expire() -> None:
    now = 1_800_000_000.0
    assert not has_session(0, now)  # never completed
    assert has_session(int(now) - 1, now)
    assert has_session(int(now) - REJECT_AFTER_TIME + 1, now)
    assert not has_session(int(now) - REJECT_AFTER_TIME, now)  # WireGuard no longer sends with it
