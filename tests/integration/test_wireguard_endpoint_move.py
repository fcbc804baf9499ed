"""The WireGuard device moving a peer to another address with a handshake asked for at once,
as NAT traversal does when a path goes onto a relay: a peer with no session handshakes at the
new address at once, and one with a session keeps it. Real wireguard-go, or the kernel module
where there is one (the Vagrant VMs run this too), in a namespace of the test's, on its
loopback (tests/helpers/wg_move.py).

This is what guards the immediate handshake: the NAT tests' waits for a first relayed echo
leave room for WireGuard's own 5 s retry, and would pass without it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from testbed.bed import Testbed, patience
from tests.helpers.mesh import kernel_has_wireguard

REPO = Path(__file__).resolve().parents[2]
INITIATION = [1, 148]  # WireGuard's message type and size
# WireGuard's own next initiation after an unanswered one (REKEY_TIMEOUT): the protocol's
# constant, not this machine's speed, so it is not stretched by patience().
RETRY = 5.0


def moved(bed: Testbed, case: str, tmp_path: Path) -> dict[str, Any]:
    ns = bed.netns(f"wgmove{case[0]}")
    res = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.helpers.wg_move", "--case", case,
         "--dir", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=patience(60),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["implementation"] == ("kernel module" if kernel_has_wireguard(bed) else "wireguard-go")
    return result


def test_a_peer_with_no_session_handshakes_at_its_new_address_at_once(bed: Testbed, tmp_path: Path) -> None:
    """Moved 1 s after its first initiation, which nobody answered: the next one reaches the new
    address as the move is made, not with WireGuard's own retry (5 s after the first, so at
    least 3.5 s after the move here, however slowly the move's two `wg` ran)."""
    seen = moved(bed, "fresh", tmp_path)
    assert seen["first"] == INITIATION and seen["moved"] == INITIATION
    assert seen["after_set"] < 1.5 and seen["after_first"] < RETRY, seen


def test_a_peer_with_a_session_keeps_it_when_moved(bed: Testbed, tmp_path: Path) -> None:
    """Moved with a session: only its endpoint changes (made anew, it would lose its keys and
    the packets queued behind a new handshake)."""
    seen = moved(bed, "session", tmp_path)
    endpoint, _, handshake, received, *_ = seen["before"]
    assert endpoint == "127.0.0.1:40201" and handshake != "0", seen
    new_endpoint, _, new_handshake, new_received, *_ = seen["after"]
    assert new_endpoint == "127.0.0.2:40201"
    # Not made anew: the same handshake, and what it had received is still counted.
    assert new_handshake == handshake and int(new_received) >= int(received) > 0, seen
