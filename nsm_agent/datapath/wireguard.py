"""One WireGuard device per node, one peer per other node.

The kernel module when this kernel has it, else `wireguard-go` started (and
supervised) by the agent in the node's namespace, where the underlay is. `wg`
configures either. Connections ride inside as VXLAN devices between the nodes'
inner addresses, so one device carries any number of connections, overlapping
address ranges and L2 payloads alike. Spawns happen only when a peer node
appears or goes: never per connection.

Netlink work runs on the netlink thread; `wg` and wireguard-go, and waiting for
wireguard-go to come up, run in a worker thread, so that a slow start never holds
up another Request's netlink work. One change of the device at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.decisions.tunnel import device_name, has_session, inner_address
from nsm_agent.state.keys import KeyPair
from nsm_common.urls import host_port

log = structlog.get_logger("nsm.agent")

SOCKET_DIR = "/var/run/wireguard"


class WireGuardError(RuntimeError):
    pass


@contextlib.asynccontextmanager
async def _as_wireguard_error() -> AsyncIterator[None]:
    """The kernel refusing a setting, or `wg` missing, is a WireGuard failure like any other."""
    try:
        yield
    except (NetlinkError, OSError) as exc:
        raise WireGuardError(str(exc)) from exc


@dataclass
class Peer:
    public_key: str
    endpoint_ip: str
    endpoint_port: int
    users: set[str] = field(default_factory=set)  # connection ids
    kept: tuple[str, int] | None = None  # carried on after a restart: the endpoint the device had


class WireGuardDevice:
    """The node's device and its peers; every method takes the NetlinkThread it runs netlink on."""

    def __init__(self, keys: KeyPair, port: int, mtu: int, wireguard_go: str = "wireguard-go") -> None:
        self.keys = keys
        self.port = port
        self.mtu = mtu
        self.name = device_name(keys.public)
        self.inner = inner_address(keys.public)
        self.wireguard_go = wireguard_go
        self.process: subprocess.Popen[bytes] | None = None
        self.implementation = ""
        self.peers: dict[str, Peer] = {}
        self._changing = asyncio.Lock()
        # Until `reconcile`: after a restart, connections not yet carried on may use a
        # peer (or the device) that the last connection known to this run lets go.
        self.keep_unused = True
        self._carried: dict[str, tuple[str, int]] | None = None  # the device's peers at start, and endpoints

    @property
    def _control(self) -> str:
        return f"{SOCKET_DIR}/{self.name}.sock"

    # Device ----------------------------------------------------------------------
    def _exists(self, nl: NetlinkThread) -> bool:
        return nl.node_rtnl().link_index(self.name) is not None

    def _kernel_create(self, nl: NetlinkThread) -> bool:
        try:
            nl.node().link("add", ifname=self.name, kind="wireguard")
            return True
        except NetlinkError:
            return False

    def _start_userspace(self) -> None:
        """Start wireguard-go and wait until its device and control socket are there (worker thread)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._control)  # left by a killed predecessor
        try:
            self.process = subprocess.Popen(
                [self.wireguard_go, "-f", self.name],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "WG_PROCESS_FOREGROUND": "1"},
                # Its own session: it outlives a restart of the agent, and so
                # does the traffic it carries.
                start_new_session=True,
            )
        except OSError as exc:
            raise WireGuardError(f"cannot start {self.wireguard_go}: {exc}") from exc
        # wireguard-go makes the device first and its control socket after: `wg set`
        # in between finds no socket, tries the kernel and fails ("Protocol not supported").
        deadline = time.monotonic() + 5
        while not os.path.exists(self._control):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._stop_userspace()
                raise WireGuardError(f"{self.wireguard_go} did not create {self.name} and {self._control}")
            time.sleep(0.002)

    def _stop_userspace(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(3)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(3)
            self.process = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._control)

    def _wg(self, *args: str) -> None:
        res = subprocess.run(["wg", "set", self.name, *args], capture_output=True, text=True)
        if res.returncode != 0:
            raise WireGuardError(f"wg set {self.name} {' '.join(args)}: {res.stderr.strip()}")

    def _address(self, nl: NetlinkThread) -> None:
        ipr = nl.node()
        index = ipr.link_lookup(ifname=self.name)[0]
        ipr.link("set", index=index, mtu=self.mtu, ifalias=f"nsm:wireguard:{self.keys.public}")
        ipr.addr("add", index=index, address=str(self.inner), prefixlen=128, flags=IFA_F_NODAD)
        ipr.link("set", index=index, state="up")

    async def _ensure(self, netlink: NetlinkThread) -> None:
        """The device exists, keyed, addressed and up; a crashed wireguard-go is restarted."""
        crashed = self.process is not None and self.process.poll() is not None
        if crashed:
            log.warning("wireguard-go exited; restarting it", device=self.name, code=self.process.returncode)  # type: ignore[union-attr]
            await asyncio.to_thread(self._stop_userspace)
        if not crashed and await netlink.run(self._exists):
            return
        if await netlink.run(self._kernel_create):
            self.implementation = "kernel module"
        else:
            await asyncio.to_thread(self._start_userspace)
            self.implementation = "wireguard-go"
        log.info("wireguard device created", device=self.name, implementation=self.implementation)
        try:
            await asyncio.to_thread(self._wg, "private-key", str(self.keys.private_path), "listen-port", str(self.port))
            await netlink.run(self._address)
            for peer in self.peers.values():
                await self._configure_peer(netlink, peer)
        except Exception:
            await self._remove(netlink)
            raise

    async def _remove(self, netlink: NetlinkThread) -> None:
        def delete(nl: NetlinkThread) -> None:
            index = nl.node().link_lookup(ifname=self.name)
            if index:
                with contextlib.suppress(NetlinkError):
                    nl.node().link("del", index=index[0])

        await netlink.run(delete)
        await asyncio.to_thread(self._stop_userspace)
        if self.implementation:
            log.info("wireguard device removed", device=self.name)
        self.implementation = ""

    async def reconcile(self, netlink: NetlinkThread) -> None:
        """After a restart, once every journalled connection is carried on: peers and a device
        that no connection needs go (an earlier run may have left them)."""
        async with self._changing, _as_wireguard_error():
            self.keep_unused = False
            for key in [k for k, peer in self.peers.items() if not peer.users]:
                await self._remove_peer(netlink, key)
            if not await netlink.run(self._exists):
                return
            if not self.peers:
                await self._remove(netlink)
                return
            # Peers an earlier run configured that no connection of this run uses.
            for key in await asyncio.to_thread(self._listed_peers) - set(self.peers):
                await self._forget_peer(netlink, key)

    # Peers ------------------------------------------------------------------------
    async def _configure_peer(self, netlink: NetlinkThread, peer: Peer, endpoint: bool = True) -> None:
        """The peer on the device, and its inner route; ENDPOINT False keeps the one the device has."""
        where = (peer.endpoint_ip, peer.endpoint_port) if endpoint else None
        await asyncio.to_thread(self._wg, *_peer_settings(peer.public_key, where))
        inner = str(inner_address(peer.public_key))

        def route(nl: NetlinkThread) -> None:
            index = nl.node().link_lookup(ifname=self.name)[0]
            nl.node().route("replace", dst=f"{inner}/128", oif=index, family=socket.AF_INET6)

        await netlink.run(route)

    async def use_peer(self, netlink: NetlinkThread, conn_id: str, public_key: str, ip: str, port: int) -> str:
        """Make sure the device and the peer node are configured; returns the peer's inner address."""
        async with self._changing, _as_wireguard_error():
            await self._ensure(netlink)
            peer = self.peers.get(public_key)
            if peer is None or (peer.endpoint_ip, peer.endpoint_port) != (ip, port):
                users = peer.users if peer is not None else set()
                # Carried on after a restart: the peer the device has keeps its endpoint, which
                # NAT traversal may have moved (to a relay, or where the peer was heard from).
                kept = (await self._kernel_peers()).get(public_key) if peer is None and self.keep_unused else None
                fresh = Peer(public_key, ip, port, users, kept)
                await self._configure_peer(netlink, fresh, endpoint=kept is None)
                self.peers[public_key] = peer = fresh
                log.info("wireguard peer configured", device=self.name, endpoint=host_port(ip, port),
                         **({"kept_endpoint": True} if kept else {}))  # fmt: skip
            peer.users.add(conn_id)
            return str(inner_address(public_key))

    def _endpoints(self) -> dict[str, tuple[str, int]]:
        """Where the device sends to each peer now (worker thread, rare)."""
        out = {}
        for key, endpoint in self._show("endpoints"):
            host, _, port = endpoint.rpartition(":")
            if port.isdigit():
                out[key] = (host.strip("[]"), int(port))
        return out

    async def endpoints(self) -> dict[str, tuple[str, int]]:
        """Each peer's endpoint as WireGuard has it (it roams to where packets come from)."""
        async with _as_wireguard_error():
            return await asyncio.to_thread(self._endpoints)

    async def set_endpoint(self, public_key: str, ip: str, port: int, handshake_now: bool = False) -> None:
        """Point a configured peer at another address (NAT traversal's path change); a peer gone
        meanwhile is left gone.

        HANDSHAKE_NOW, and the peer has no session: it is made anew there instead. WireGuard
        sends a handshake at most every 5 s, so the one due would reach the new address only
        seconds later, while a new peer's goes at once (what was queued for the old one is
        dropped: nothing got through there anyway). A peer with a session keeps it."""
        async with self._changing, _as_wireguard_error():
            if public_key in self.peers:
                await asyncio.to_thread(self._move_peer, public_key, (ip, port), handshake_now)

    def _move_peer(self, public_key: str, endpoint: tuple[str, int], handshake_now: bool) -> None:
        """Worker thread: one `wg set` (and a `wg show` first, for HANDSHAKE_NOW), on a path change only."""
        if handshake_now:
            stamp = dict(self._show("latest-handshakes")).get(public_key, "0")
            handshake_now = not has_session(int(stamp) if stamp.isdigit() else 0, time.time())
        if not handshake_now:
            self._wg("peer", public_key, "endpoint", host_port(*endpoint))
            return
        # Removed and added in one `wg set`, so the device is without the peer at no moment
        # (should the set fail half way, traversal's retry makes it again), and its route, on
        # the device rather than the peer, stays.
        self._wg("peer", public_key, "remove", *_peer_settings(public_key, endpoint))
        log.info("wireguard peer made anew: handshake now", device=self.name, peer=public_key[:8])

    def _show(self, what: str) -> list[tuple[str, str]]:
        """`wg show DEVICE WHAT` as (peer, value) pairs (a process: worker thread, rare)."""
        res = subprocess.run(["wg", "show", self.name, what], capture_output=True, text=True)
        if res.returncode != 0:
            raise WireGuardError(f"wg show {self.name} {what}: {res.stderr.strip()}")
        return [(key, value) for key, _, value in (line.partition("\t") for line in res.stdout.splitlines())]

    async def release(self, netlink: NetlinkThread, conn_id: str, public_key: str) -> None:
        """Forget a connection; a peer no connection needs goes, and the device with the last."""
        async with self._changing, _as_wireguard_error():
            peer = self.peers.get(public_key)
            if peer is None:
                return
            peer.users.discard(conn_id)
            if peer.users or self.keep_unused:
                return
            await self._remove_peer(netlink, public_key)
            if not self.peers:
                await self._remove(netlink)

    async def _remove_peer(self, netlink: NetlinkThread, public_key: str) -> None:
        del self.peers[public_key]
        if await netlink.run(self._exists):
            with contextlib.suppress(WireGuardError):
                await asyncio.to_thread(self._wg, "peer", public_key, "remove")

    async def _kernel_peers(self) -> dict[str, tuple[str, int]]:
        """The peers the device had when this run began, with their endpoints (asked once, until
        `reconcile`); one without an endpoint has none to keep, and is configured afresh."""
        if self._carried is None:
            try:
                self._carried = await asyncio.to_thread(self._endpoints)
            except WireGuardError:
                self._carried = {}
        return self._carried

    def kept_endpoint(self, public_key: str) -> tuple[str, int] | None:
        """Where the device sent to this peer when a restart carried it on (None otherwise)."""
        peer = self.peers.get(public_key)
        return peer.kept if peer is not None else None

    def _listed_peers(self) -> set[str]:
        """The peers the device has (on a restart's tidy-up only)."""
        return {key for key, _ in self._show("peers") if key}

    async def _forget_peer(self, netlink: NetlinkThread, public_key: str) -> None:
        """A peer no connection knows: off the device, and its inner route with it."""
        with contextlib.suppress(WireGuardError):
            await asyncio.to_thread(self._wg, "peer", public_key, "remove")

        def unroute(nl: NetlinkThread) -> None:
            with contextlib.suppress(NetlinkError):
                nl.node().route("del", dst=f"{inner_address(public_key)}/128", family=socket.AF_INET6)

        await netlink.run(unroute)
        log.info("wireguard peer of an earlier run removed", device=self.name)


def _peer_settings(public_key: str, endpoint: tuple[str, int] | None) -> list[str]:
    """`wg set` arguments configuring a peer: its endpoint (None: the one it has), its inner
    address, and a keepalive within the 30 s a NAT keeps an unanswered UDP mapping."""
    where = ["endpoint", host_port(*endpoint)] if endpoint is not None else []
    inner = str(inner_address(public_key))
    return ["peer", public_key, *where, "allowed-ips", f"{inner}/128", "persistent-keepalive", "25"]
