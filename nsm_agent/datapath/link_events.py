"""The kernel's word on the links and namespaces the agent serves, as it happens.

- Links: one netlink socket per namespace, joined to the link group, read by
  the event loop (a plain socket needs no thread once opened; it is opened on
  the netlink thread, inside its namespace). Each RTM_NEWLINK / RTM_DELLINK is
  read as a `LinkSummary`. When the kernel drops events (ENOBUFS, the socket's
  buffer overran) the namespace's links are read again and handed over whole.
- Namespaces: a named one (a bind mount, as `ip netns` and container runtimes
  make under /run/netns) ends when its file goes: inotify on its folder tells
  at once. One known only by a process's /proc path is looked at once a second;
  when that process exits, the namespace is looked for by its inode (another
  process of the pod may hold it) before it is called gone.

Both sockets and watched namespaces hold nothing but a socket per namespace:
the socket keeps the namespace alive, so it goes with the last connection there.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import struct
from collections.abc import Callable
from typing import Protocol

import structlog
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_NEWLINK

from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.datapath.rtnl import LinkSummary, link_summary
from nsm_agent.netns.resolve import NetnsRef
from nsm_common.netns import inside

log = structlog.get_logger("nsm.agent")

RTMGRP_LINK = 1  # linux/rtnetlink.h: the legacy group bit of RTNLGRP_LINK
_HEADER = struct.Struct("=IHHII")
RECEIVE_BUFFER = 1 << 20  # a thousand link events (~1 KiB each) of a busy restart fit

# A link event: the namespace, the link as the kernel now describes it, and whether it was deleted.
OnLink = Callable[[NetnsRef, LinkSummary, bool], None]


SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # past net.core.rmem_max (the agent is root)


def _event_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK, 0)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except PermissionError:  # not root: as much as rmem_max allows; an overrun is read again
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((0, RTMGRP_LINK))
    except BaseException:
        sock.close()
        raise
    return sock


def read_events(buf: bytes) -> list[tuple[LinkSummary, bool]]:
    """The link events in one datagram of the link group."""
    out = []
    offset = 0
    while offset + _HEADER.size <= len(buf):
        length, kind, _, _, _ = _HEADER.unpack_from(buf, offset)
        if length < _HEADER.size:
            break
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            out.append((link_summary(buf[offset : offset + length]), kind == RTM_DELLINK))
        offset += (length + 3) & ~3
    return out


class _Users:
    """How many users each namespace has (watch and unwatch come in pairs)."""

    def __init__(self) -> None:
        self._count: dict[tuple[int, int], int] = {}

    def add(self, key: tuple[int, int]) -> None:
        self._count[key] = self._count.get(key, 0) + 1

    def remove(self, key: tuple[int, int]) -> bool:
        """One less; True when that was the last."""
        left = self._count.get(key, 0) - 1
        if left > 0:
            self._count[key] = left
            return False
        self._count.pop(key, None)
        return True

    def __contains__(self, key: tuple[int, int]) -> bool:
        return key in self._count

    def clear(self) -> None:
        self._count.clear()


class LinkEvents:
    """Link events of every namespace watched (reference-counted by the caller's `watch`).

    `watch` returns at once: the socket is opened in the background (a thread hop kept off
    the Request path), and once it listens the namespace's links are read once and handed
    to `on_snapshot`, so that nothing that happened before it listened goes unseen.
    """

    def __init__(
        self,
        netlink: NetlinkThread,
        on_link: OnLink,
        on_snapshot: Callable[[NetnsRef, list[LinkSummary]], None],
    ) -> None:
        self.netlink = netlink
        self.on_link = on_link
        self.on_snapshot = on_snapshot
        self._socks: dict[tuple[int, int], tuple[NetnsRef, socket.socket]] = {}
        self._users = _Users()
        self._opening: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._looking: set[asyncio.Task[None]] = set()
        self._closed = False

    def watch(self, ns: NetnsRef) -> None:
        """Follow `ns` (once per user; `unwatch` as often)."""
        self._users.add(ns.key)
        if ns.key not in self._socks and ns.key not in self._opening:
            task = asyncio.get_running_loop().create_task(self._open(ns))
            self._opening[ns.key] = task
            task.add_done_callback(lambda _: self._opening.pop(ns.key, None))

    async def _open(self, ns: NetnsRef) -> None:
        def open_and_look(nl: NetlinkThread) -> tuple[socket.socket, list[LinkSummary]]:
            sock = inside(ns.path, _event_socket, key=ns.key)
            try:
                return sock, nl.rtnl(ns).summaries()  # after it listens: nothing falls between
            except BaseException:
                sock.close()
                raise

        try:
            sock, links = await self.netlink.run(open_and_look)
        except Exception as exc:  # OSError, NetlinkError: the namespace went; its own watch tells
            log.warning("cannot follow link events", netns=ns.path, error=str(exc))
            return
        if self._closed or ns.key not in self._users:  # unwatched meanwhile
            sock.close()
            return
        self._socks[ns.key] = (ns, sock)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, ns.key)
        self.on_snapshot(ns, links)

    def unwatch(self, ns: NetnsRef) -> None:
        """One user of `ns` less; the socket goes with the last."""
        if self._users.remove(ns.key):
            self._drop(ns.key)

    async def _look_again(self, ns: NetnsRef) -> None:
        try:
            links = await self.netlink.run(lambda nl: nl.rtnl(ns).summaries())
        except Exception as exc:
            log.warning("cannot read a namespace's links again", netns=ns.path, error=str(exc))
            return
        if ns.key in self._socks:
            self.on_snapshot(ns, links)

    def _drop(self, key: tuple[int, int]) -> None:
        held = self._socks.pop(key, None)
        if held is not None:
            asyncio.get_running_loop().remove_reader(held[1].fileno())
            held[1].close()

    def _readable(self, key: tuple[int, int]) -> None:
        held = self._socks.get(key)
        if held is None:
            return
        ns, sock = held
        while True:
            try:
                buf = sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    log.warning("link events were dropped by the kernel; looking again", netns=ns.path)
                    task = asyncio.get_running_loop().create_task(self._look_again(ns))
                    self._looking.add(task)
                    task.add_done_callback(self._looking.discard)
                    continue
                # Not expected of a netlink socket; stop reading it rather than spin on it.
                log.error("link events cannot be read any more", netns=ns.path, error=str(exc))
                self._drop(key)
                return
            for link, deleted in read_events(buf):
                self.on_link(ns, link, deleted)

    def close(self) -> None:
        """Stop following everything (a socket still being opened is closed when it comes)."""
        self._closed = True
        for task in self._looking:
            task.cancel()
        for key in list(self._socks):
            self._drop(key)
        self._users.clear()


# Namespaces' end ---------------------------------------------------------------------
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
IN_MOVED_FROM, IN_DELETE = 0x40, 0x200  # linux/inotify.h
_INOTIFY_EVENT = struct.Struct("=iIII")  # wd, mask, cookie, len (then the name)
POLL_EVERY = 1.0


class _Inotify:
    """The three calls of inotify(7) the namespace watch needs (libc, through ctypes)."""

    def __init__(self) -> None:
        # The interpreter's own symbols include libc's: nothing to look for on disk.
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")

    def add(self, folder: str) -> int:
        wd = int(self._libc.inotify_add_watch(self.fd, os.fsencode(folder), IN_DELETE | IN_MOVED_FROM))
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")
        return wd

    def read(self) -> list[tuple[int, str]]:
        """(watch, name) of each event waiting."""
        out: list[tuple[int, str]] = []
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return out
            offset = 0
            while offset + _INOTIFY_EVENT.size <= len(buf):
                wd, _, _, length = _INOTIFY_EVENT.unpack_from(buf, offset)
                start = offset + _INOTIFY_EVENT.size
                out.append((wd, buf[start : start + length].split(b"\0", 1)[0].decode(errors="replace")))
                offset = start + length

    def close(self) -> None:
        os.close(self.fd)


def _same(ns: NetnsRef) -> bool:
    try:
        st = os.stat(ns.path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == ns.key


class NamespaceEnds:
    """Calls `on_gone(ns)` once a watched namespace's path no longer opens it."""

    def __init__(
        self, on_gone: Callable[[NetnsRef], None], relocate: Callable[[NetnsRef], NetnsRef | None] | None = None
    ) -> None:
        self.on_gone = on_gone
        # The namespace by its inode at another path, or None (`NetnsResolver.find`).
        self.relocate = relocate
        self._watched: dict[tuple[int, int], NetnsRef] = {}
        self._users = _Users()
        self._polled: set[tuple[int, int]] = set()  # looked at once a second (no inotify for them)
        self._folders: dict[str, int] = {}  # real folder -> watch
        self._inotify: _Inotify | None = None
        self._poller: asyncio.Task[None] | None = None

    def watch(self, ns: NetnsRef) -> None:
        """Follow `ns` (once per user; `unwatch` as often)."""
        self._users.add(ns.key)
        if ns.key in self._watched:
            return
        self._watched[ns.key] = ns
        if ns.path.startswith("/proc/") or not self._follow(os.path.dirname(os.path.realpath(ns.path))):
            self._polled.add(ns.key)
            if self._poller is None or self._poller.done():
                self._poller = asyncio.get_running_loop().create_task(self._poll())
        if not _same(ns):  # went before the watch began
            self._gone(ns)

    def unwatch(self, ns: NetnsRef) -> None:
        """One user of `ns` less; it is no longer watched after the last."""
        if not self._users.remove(ns.key):
            return
        self._watched.pop(ns.key, None)
        self._polled.discard(ns.key)

    def _follow(self, folder: str) -> bool:
        """Hear of deletions in `folder` at once; False when inotify cannot (then it is polled)."""
        if folder in self._folders:
            return True
        try:
            if self._inotify is None:
                self._inotify = _Inotify()
                asyncio.get_running_loop().add_reader(self._inotify.fd, self._readable)
            self._folders[folder] = self._inotify.add(folder)
        except OSError as exc:
            log.warning("cannot watch a namespace folder; looking once a second instead", folder=folder, error=str(exc))
            return False
        return True

    def _readable(self) -> None:
        assert self._inotify is not None
        if self._inotify.read():  # which name went matters less than checking every one there
            for ns in [ns for key, ns in self._watched.items() if key not in self._polled]:
                if not _same(ns):
                    self._gone(ns)

    async def _poll(self) -> None:
        while self._polled:
            await asyncio.sleep(POLL_EVERY)
            for ns in [self._watched[key] for key in self._polled if key in self._watched]:
                if _same(ns):
                    continue
                moved = self.relocate(ns) if self.relocate is not None else None
                if moved is not None and moved.key == ns.key:
                    self._watched[ns.key] = moved  # another process of the pod holds it
                else:
                    self._gone(ns)

    def _gone(self, ns: NetnsRef) -> None:
        self._polled.discard(ns.key)
        if self._watched.pop(ns.key, None) is not None:
            self.on_gone(ns)

    def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self._inotify is not None:
            asyncio.get_running_loop().remove_reader(self._inotify.fd)
            self._inotify.close()
            self._inotify = None
        self._folders.clear()
        self._watched.clear()
        self._users.clear()
        self._polled.clear()


class Listener(Protocol):
    """Who hears what the kernel says (the LinkWatch step)."""

    def on_link(self, ns: NetnsRef, link: LinkSummary, deleted: bool) -> None: ...
    def on_snapshot(self, ns: NetnsRef, links: list[LinkSummary]) -> None: ...
    def on_gone(self, ns: NetnsRef) -> None: ...


class KernelFollow:
    """Link events and namespaces' end together, for one `Listener` (set by `attach`)."""

    def __init__(self, netlink: NetlinkThread, relocate: Callable[[NetnsRef], NetnsRef | None] | None = None) -> None:
        self._listener: Listener | None = None
        self.links = LinkEvents(netlink, self._on_link, self._on_snapshot)
        self.ends = NamespaceEnds(self._on_gone, relocate)

    def attach(self, listener: Listener) -> None:
        self._listener = listener

    def watch(self, ns: NetnsRef) -> None:
        """Follow `ns`'s links and its end (once per user)."""
        self.ends.watch(ns)
        self.links.watch(ns)

    def unwatch(self, ns: NetnsRef) -> None:
        """One user of `ns` less."""
        self.ends.unwatch(ns)
        self.links.unwatch(ns)

    def _on_link(self, ns: NetnsRef, link: LinkSummary, deleted: bool) -> None:
        if self._listener is not None:
            self._listener.on_link(ns, link, deleted)

    def _on_snapshot(self, ns: NetnsRef, links: list[LinkSummary]) -> None:
        if self._listener is not None:
            self._listener.on_snapshot(ns, links)

    def _on_gone(self, ns: NetnsRef) -> None:
        if self._listener is not None:
            self._listener.on_gone(ns)

    def close(self) -> None:
        """Stop following (the agent stops)."""
        self.links.close()
        self.ends.close()
