"""Follow each connection's interfaces in the kernel: deleted, set down, or their namespace gone.

Probes notice a broken wire only after a few missed echoes; the kernel says so
the moment it happens. The wire steps say which links they built (`WireLinks`);
this step follows those links' events (`nsm_agent.datapath.link_events`) and
tells `Broken`: an interface of ours deleted or set down by someone else (the
wire is repaired), or a namespace gone (a pod's sandbox restarted: the client's
connection is closed; an endpoint's: its clients move).

Events while this hop is itself changing a connection (a Request or Close of
it is running) are mostly the step's own doing: they are acted on only if they
broke a link that the Request kept.
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
        # While busy: the latest word on each followed link (True: deleted or down).
        self._meanwhile: dict[str, dict[tuple[tuple[int, int], int], bool]] = {}

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        conn_id = request.connection.id
        self._busy.add(conn_id)
        try:
            reply = await nxt.request(request, call)
            built = call.get(WireLinks)
            if built is not None and built.links != self._links.get(conn_id):
                self._replace(conn_id, built.links)
        finally:
            self._busy.discard(conn_id)
            heard = self._meanwhile.pop(conn_id, {})
        kept = {(ns.key, index) for ns, index, _ in self._links.get(conn_id, ())}
        if self.broken is not None and any(broke and link in kept for link, broke in heard.items()):
            self.broken.repair(conn_id, "an interface it kept went while it was being changed")
        return reply

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        self._busy.add(conn.id)
        try:
            self._replace(conn.id, ())
            await nxt.close(conn, call)
        finally:
            self._busy.discard(conn.id)
            self._meanwhile.pop(conn.id, None)

    def _replace(self, conn_id: str, links: tuple[tuple[NetnsRef, int, str], ...]) -> None:
        """Follow `links` for the connection instead of what it had: the new first, so that
        a namespace both share keeps its socket."""
        old = self._links.pop(conn_id, ())
        if links:
            self._links[conn_id] = links
        for ns, index, _ in links:
            self._by_link[(ns.key, index)] = conn_id
            self._by_ns.setdefault(ns.key, set()).add(conn_id)
            self.follow.watch(ns)
        now = {(ns.key, index) for ns, index, _ in links}
        for ns, index, _ in old:
            if (ns.key, index) not in now and self._by_link.get((ns.key, index)) == conn_id:
                del self._by_link[(ns.key, index)]
            users = self._by_ns.get(ns.key)
            if users is not None and not any(n.key == ns.key for n, _, _ in links):
                users.discard(conn_id)
                if not users:
                    del self._by_ns[ns.key]
            self.follow.unwatch(ns)

    # What the kernel says --------------------------------------------------------------
    def on_link(self, ns: NetnsRef, link: LinkSummary, deleted: bool) -> None:
        conn_id = self._by_link.get((ns.key, link.index))
        if conn_id is None or self.broken is None:
            return
        if conn_id in self._busy:
            self._meanwhile.setdefault(conn_id, {})[(ns.key, link.index)] = deleted or not link.up
            return
        if link.up and not deleted:
            return
        what = "deleted" if deleted else "set down"
        self.broken.repair(conn_id, f"interface {link.ifname or link.index} {what} in {ns.path}")

    def on_snapshot(self, ns: NetnsRef, links: list[LinkSummary]) -> None:
        """The namespace's links whole (when its events began to be followed, or after the
        kernel dropped some): a connection with one of its links missing or down is broken."""
        if self.broken is None:
            return
        up = {link.index for link in links if link.up}
        for conn_id in sorted(self._by_ns.get(ns.key, ())):
            if conn_id in self._busy:
                continue
            ours = [index for n, index, _ in self._links.get(conn_id, ()) if n.key == ns.key]
            if any(index not in up for index in ours):
                self.broken.repair(conn_id, f"an interface of it is missing or down in {ns.path}")

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
