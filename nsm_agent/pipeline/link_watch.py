"""Follow each connection's interfaces in the kernel: deleted, set down, or their namespace gone.

Probes notice a broken wire only after a few missed echoes; the kernel says so
the moment it happens. The wire steps say which links they built (`WireLinks`);
this step follows those links' events (`nsm_agent.datapath.link_events`) and
tells `Broken`: an interface of ours deleted or set down by someone else (the
wire is repaired), or a namespace gone (a pod's sandbox restarted: the client's
connection is closed; an endpoint's: its clients move).

Events while this hop is itself changing a connection (a Request or Close of
it is running) are the step's own doing and are not acted on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from nsm_agent.datapath.rtnl import LinkSummary
from nsm_agent.netns.resolve import NetnsRef
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Call, Next, Step

CLIENT, ENDPOINT = "client", "endpoint"


@dataclass(frozen=True)
class WireLinks:
    """The links a wire step built for this Request: (namespace, ifindex, whose side) each."""

    links: tuple[tuple[NetnsRef, int, str], ...]


class Broken(Protocol):
    """What the agent does about a broken wire (`nsm_agent.state.repair`; a recorder in tests)."""

    def repair(self, conn_id: str, why: str) -> None: ...
    def client_gone(self, conn_id: str, why: str) -> None: ...
    def endpoint_gone(self, conn_id: str, why: str) -> None: ...


class Follow(Protocol):
    """The kernel side (`LinkEvents` and `NamespaceEnds`, behind one face; a fake in tests)."""

    def watch(self, ns: NetnsRef) -> None: ...
    def unwatch(self, ns: NetnsRef) -> None: ...


class LinkWatch(Step):
    """Reads: `WireLinks` (once the steps below answered). Provides: nothing to other steps;
    tells `Broken` what the kernel reports of the links."""

    def __init__(self, follow: Follow, broken: Broken | None = None) -> None:
        self.follow = follow
        # What acts on the news; set once the chain it repairs through exists (main).
        self.broken = broken
        self._links: dict[str, tuple[tuple[NetnsRef, int, str], ...]] = {}
        self._by_link: dict[tuple[tuple[int, int], int], str] = {}  # (namespace, ifindex) -> connection
        self._by_ns: dict[tuple[int, int], set[str]] = {}
        self._busy: set[str] = set()

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        conn_id = request.connection.id
        self._busy.add(conn_id)
        try:
            reply = await nxt.request(request, call)
            built = call.get(WireLinks)
            if built is not None and built.links != self._links.get(conn_id):
                self._forget(conn_id)
                self._follow(conn_id, built.links)
            return reply
        finally:
            self._busy.discard(conn_id)

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        self._busy.add(conn.id)
        try:
            self._forget(conn.id)
            await nxt.close(conn, call)
        finally:
            self._busy.discard(conn.id)

    def _follow(self, conn_id: str, links: tuple[tuple[NetnsRef, int, str], ...]) -> None:
        self._links[conn_id] = links
        for ns, index, _ in links:
            self._by_link[(ns.key, index)] = conn_id
            self._by_ns.setdefault(ns.key, set()).add(conn_id)
            self.follow.watch(ns)

    def _forget(self, conn_id: str) -> None:
        for ns, index, _ in self._links.pop(conn_id, ()):
            if self._by_link.get((ns.key, index)) == conn_id:
                del self._by_link[(ns.key, index)]
            users = self._by_ns.get(ns.key)
            if users is not None:
                users.discard(conn_id)
                if not users:
                    del self._by_ns[ns.key]
            self.follow.unwatch(ns)

    # What the kernel says --------------------------------------------------------------
    def on_link(self, ns: NetnsRef, link: LinkSummary, deleted: bool) -> None:
        conn_id = self._by_link.get((ns.key, link.index))
        if conn_id is None or conn_id in self._busy or (link.up and not deleted) or self.broken is None:
            return
        what = "deleted" if deleted else "set down"
        self.broken.repair(conn_id, f"interface {link.ifname or link.index} {what} in {ns.path}")

    def on_snapshot(self, ns: NetnsRef, links: list[LinkSummary]) -> None:
        """The namespace's links when its events began to be followed: one of ours missing or
        down meanwhile is broken."""
        if self.broken is None:
            return
        up = {link.index for link in links if link.up}
        for conn_id in sorted(self._by_ns.get(ns.key, ())):
            if conn_id in self._busy:
                continue
            ours = [index for n, index, _ in self._links.get(conn_id, ()) if n.key == ns.key]
            if any(index not in up for index in ours):
                self.broken.repair(conn_id, f"an interface went in {ns.path} before its events were followed")

    def on_overrun(self, ns: NetnsRef) -> None:
        """Events were lost: every connection there is looked at again (a repair of a whole
        wire adopts it untouched)."""
        for conn_id in sorted(self._by_ns.get(ns.key, ())):
            if conn_id not in self._busy and self.broken is not None:
                self.broken.repair(conn_id, f"link events lost in {ns.path}")

    def on_gone(self, ns: NetnsRef) -> None:
        if self.broken is None:
            return
        for conn_id in sorted(self._by_ns.get(ns.key, ())):
            sides = {side for n, _, side in self._links.get(conn_id, ()) if n.key == ns.key}
            why = f"network namespace {ns.path} is gone"
            if CLIENT in sides:
                self.broken.client_gone(conn_id, why)
            else:
                self.broken.endpoint_gone(conn_id, why)
