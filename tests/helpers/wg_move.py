"""The node's WireGuard device moving a peer's endpoint (`WireGuardDevice.set_endpoint`, as NAT
traversal does when a path goes onto a relay), run in the namespace it is started in; prints
what was seen as JSON.

    ip netns exec NS python -m tests.helpers.wg_move --case fresh|session --dir DIR

fresh: a peer that never answers, moved 1 s after its first handshake initiation, a handshake
asked for at once: how long after the first, and after the move, does the next initiation
reach the new address (WireGuard's own retry would come 5 s after the first)?
session: two devices with a session between them on loopback; one moves the other to
127.0.0.2, a handshake asked for at once: is the session kept (same handshake, counters not
reset)?
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.datapath.wireguard import WireGuardDevice
from nsm_agent.state.keys import load_or_create
from testbed.bed import patience

MTU = 1420


def device(state: Path, port: int) -> WireGuardDevice:
    """A device with its own key under STATE, listening on PORT; released, its last peer
    takes it (and its wireguard-go) with it."""
    state.mkdir(parents=True, exist_ok=True)
    dev = WireGuardDevice(load_or_create(state), port, MTU)
    dev.keep_unused = False
    return dev


def listener(stack: contextlib.ExitStack, port: int) -> socket.socket:
    """A UDP socket on loopback PORT standing in for a peer that never answers."""
    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.bind(("127.0.0.1", port))
    sock.settimeout(patience(10))
    return sock


def dump(dev: WireGuardDevice) -> dict[str, list[str]]:
    """`wg show DEV dump`'s peer lines by key: endpoint, allowed IPs, latest handshake, rx, tx, …"""
    out = subprocess.run(["wg", "show", dev.name, "dump"], capture_output=True, text=True, check=True).stdout
    lines = [line.split("\t") for line in out.splitlines()[1:]]
    return {f[0]: f[2:] for f in lines}


async def fresh(nl: NetlinkThread, state: Path) -> dict[str, Any]:
    dev = device(state / "a", 40100)
    raw = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    silent = base64.b64encode(raw).decode()
    with contextlib.ExitStack() as stack:
        old, new = listener(stack, 40101), listener(stack, 40102)
        try:
            await dev.use_peer(nl, "conn", silent, "127.0.0.1", 40101)
            first = await asyncio.to_thread(old.recv, 2048)
            first_at = time.monotonic()
            await asyncio.sleep(1)
            await dev.set_endpoint(silent, "127.0.0.1", 40102, handshake_now=True)
            set_at = time.monotonic()
            moved = await asyncio.to_thread(new.recv, 2048)
            now = time.monotonic()
            return {"implementation": dev.implementation, "first": [first[0], len(first)],
                    "moved": [moved[0], len(moved)], "after_first": now - first_at,
                    "after_set": now - set_at}  # fmt: skip
        finally:
            await dev.release(nl, "conn", silent)


async def session(nl: NetlinkThread, state: Path) -> dict[str, Any]:
    a, b = device(state / "a", 40200), device(state / "b", 40201)
    try:
        await a.use_peer(nl, "conn", b.keys.public, "127.0.0.1", 40201)
        await b.use_peer(nl, "conn", a.keys.public, "127.0.0.1", 40200)
        deadline = time.monotonic() + patience(10)
        while dump(a)[b.keys.public][2] == "0" and time.monotonic() < deadline:  # persistent keepalive's
            await asyncio.sleep(0.1)
        before = dump(a)[b.keys.public]
        await a.set_endpoint(b.keys.public, "127.0.0.2", 40201, handshake_now=True)
        after = dump(a)[b.keys.public]
        return {"implementation": a.implementation, "before": before, "after": after}
    finally:
        try:
            await a.release(nl, "conn", b.keys.public)
        finally:
            await b.release(nl, "conn", a.keys.public)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=["fresh", "session"], required=True)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    nl = NetlinkThread()
    try:
        case = fresh if args.case == "fresh" else session
        print(json.dumps(asyncio.run(case(nl, args.dir))))
    finally:
        nl.close()


if __name__ == "__main__":
    main()
