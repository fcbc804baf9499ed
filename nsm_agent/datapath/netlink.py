"""One thread owns every netlink socket.

pyroute2 sockets must stay on the thread that opened them (used from another
thread they can silently reach that thread's namespace), and `setns` changes
only the calling thread. So every netlink call runs here, on one thread that
never awaits and never runs gRPC, with one cached socket per namespace.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pyroute2 import IPRoute

from nsm_agent.datapath.rtnl import Rtnl
from nsm_agent.netns.resolve import NetnsRef
from nsm_common.netns import inside

T = TypeVar("T")


class WrongThread(RuntimeError):
    """A netlink socket was asked for outside the netlink thread."""


class NetlinkThread:
    """The one thread all netlink work runs on, with one cached socket per namespace (see the module docstring)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
        self._thread_id: int | None = None
        self._sockets: dict[tuple[int, int], Rtnl] = {}
        self._refs: dict[tuple[int, int], int] = {}
        self._node: IPRoute | None = None
        self._node_rtnl: Rtnl | None = None

    async def run(self, fn: Callable[[NetlinkThread], T]) -> T:
        """Run `fn(self)` on the netlink thread and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._enter, fn)

    def run_sync(self, fn: Callable[[NetlinkThread], T]) -> T:
        return self._pool.submit(self._enter, fn).result()

    def _enter(self, fn: Callable[[NetlinkThread], T]) -> T:
        self._thread_id = threading.get_ident()
        try:
            return fn(self)
        except BaseException:
            # A failed operation may have opened sockets no wire holds; an open
            # socket would keep a deleted namespace alive.
            self.trim()
            raise

    def _check_thread(self) -> None:
        if threading.get_ident() != self._thread_id:
            raise WrongThread("netlink sockets may only be used on the netlink thread")

    def rtnl(self, ns: NetnsRef) -> Rtnl:
        """The cached socket bound to `ns`, opened on first use (netlink thread only; see rtnl.py)."""
        self._check_thread()
        sock = self._sockets.get(ns.key)
        if sock is None:
            sock = inside(ns.path, Rtnl, key=ns.key)
            self._sockets[ns.key] = sock
        return sock

    def node(self) -> IPRoute:
        """The socket in the agent's own (the node's) namespace, where the underlay is."""
        self._check_thread()
        if self._node is None:
            self._node = IPRoute()
        return self._node

    def node_rtnl(self) -> Rtnl:
        """The batching socket in the agent's own namespace."""
        self._check_thread()
        if self._node_rtnl is None:
            self._node_rtnl = Rtnl()
        return self._node_rtnl

    def hold(self, ns: NetnsRef) -> None:
        """Keep the socket to `ns` open for a wire that lives there."""
        self._check_thread()
        self._refs[ns.key] = self._refs.get(ns.key, 0) + 1

    def unhold(self, ns: NetnsRef) -> None:
        self._check_thread()
        left = self._refs.get(ns.key, 0) - 1
        if left > 0:
            self._refs[ns.key] = left
        else:
            self._refs.pop(ns.key, None)

    def trim(self) -> None:
        """Close sockets no wire needs: an open socket keeps a deleted namespace alive."""
        self._check_thread()
        for key in [k for k in self._sockets if k not in self._refs]:
            self._sockets.pop(key).close()

    def close(self) -> None:
        def _close(_: NetlinkThread) -> None:
            for sock in self._sockets.values():
                sock.close()
            if self._node is not None:
                self._node.close()
            if self._node_rtnl is not None:
                self._node_rtnl.close()
            self._sockets.clear()
            self._refs.clear()

        self.run_sync(_close)
        self._pool.shutdown(wait=True)
