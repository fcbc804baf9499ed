"""After a restart: carry on with what the journal says this agent holds.

In two phases, so that a thousand connections are carried on in well under a
second and new Requests are served all the while:

1. *Survey* (before `Restore.run` returns): one link dump per namespace the
   journal names. A done connection whose interfaces are all there, up and
   carrying its alias is *intact*: the kernel carries its traffic, Monitor
   shows it, a refresh from its client adopts it through the chain, and a
   Close undoes it from the journal. Any other done connection is requested
   again through the chain now (its wire is rebuilt, or, its pod gone, it is
   undone and its next hop closed); unfinished intents are undone from their
   notes.
2. *Settle* (in the background, a few at a time): every intact connection is
   requested again through the chain, as a refresh would be, so that each step
   holds it again (expiry, the endpoint watch, tunnels). The steps find the
   wires they built (by alias) and adopt them without touching the traffic. A
   Request or Close of a connection not settled yet waits for its replay, which
   then goes first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field

import grpc
import structlog

from nsm_agent.datapath.links import delete_by_alias
from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.decisions.names import wire_alias
from nsm_agent.decisions.restore import Present, intact
from nsm_agent.netns.resolve import NetnsRef, NetnsResolver
from nsm_agent.netns.spec import NetnsSpec
from nsm_agent.state.journal import DONE, DOWNSTREAM_ID, Entry, JournalStore, downstream_ids
from nsm_api import networkservice_pb2_grpc
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.begin import Begin
from nsm_common.chain.chain import Call, Chain
from nsm_common.chain.monitor import ConnectionEvents
from nsm_common.chain.path_tokens import OutgoingTokens
from nsm_common.errors import NsmError
from nsm_common.identity.spiffe_id import SpiffeId, SpiffeIdError
from nsm_common.identity.transport import LOCAL_ONLY, Transport, TransportError
from nsm_common.timeutil import now, ts_seconds
from nsm_common.urls import UrlError, parse_address

log = structlog.get_logger("nsm.agent")

RETRY_EVERY = 1.0
# Connections requested again at once while the survey waits for them (broken
# ones): enough to keep the netlink thread's batches and the endpoints busy.
REBUILD_CONCURRENCY = 32
# Intact connections replayed at once while settling, beside live Requests: a
# new Request should not queue behind a thousand replays.
SETTLE_CONCURRENCY = 8


def replay_request(entry: Entry) -> NetworkServiceRequest:
    """The Request that continues a journalled connection, as its caller would send it."""
    assert entry.reply is not None
    req = NetworkServiceRequest()
    req.CopyFrom(entry.request)
    conn = req.connection
    conn.CopyFrom(entry.reply)
    index = conn.path.index
    if index > 0:  # back to the caller's position
        conn.path.index = index - 1
        conn.id = conn.path.path_segments[index - 1].id
    remote = [m for m in entry.request.mechanism_preferences if m.cls == "REMOTE"]
    if remote and entry.reply.mechanism.type:
        # Keep what the other agent agreed to (its VNI, its keys), not its first offer.
        del req.mechanism_preferences[:]
        req.mechanism_preferences.append(entry.reply.mechanism)
    return req


def namespaces_of(entry: Entry) -> list[str]:
    """The namespaces of the connection's wire now (`wire`, replaced on every Request); from
    an older journal, every namespace the wire steps ever noted (`netns`)."""
    return list(dict.fromkeys(entry.notes.get("wire") or entry.notes.get("netns", [])))


def uses_wireguard(entry: Entry) -> bool:
    """The connection's tunnel is WireGuard: on the client's node its own segment says so,
    on the endpoint's node the mechanism it answered with."""
    assert entry.reply is not None
    path = entry.reply.path
    own = path.path_segments[path.index] if path.index < len(path.path_segments) else None
    return entry.reply.mechanism.type == "WIREGUARD" or (own is not None and own.metrics.get("tunnel") == "WIREGUARD")


def wireguard_device_up(nl: NetlinkThread) -> bool:
    """The node's WireGuard device is there (wireguard-go dies with an agent's container)."""
    return any(link.alias.startswith("nsm:wireguard:") and link.up for link in nl.node_rtnl().summaries())


def link_aliases(nl: NetlinkThread, ns: NetnsRef) -> set[str]:
    """The aliases of the links that are up in `ns` (netlink thread)."""
    return {link.alias for link in nl.rtnl(ns).summaries() if link.up and link.alias}


async def undo_intent(
    entry: Entry,
    agent_name: str,
    resolver: NetnsResolver,
    netlink: NetlinkThread,
    timeout: float,
    transport: Transport = LOCAL_ONLY,
) -> None:
    """A Request the agent died in: remove what it may have built, close what it may have asked."""
    alias = wire_alias(agent_name, entry.conn_id)
    paths = list(entry.notes.get("netns", []))
    client = [m for m in entry.request.mechanism_preferences if m.type == "KERNEL"]
    if client and client[0].parameters.get("inodeURL", "").startswith("file://"):
        paths.append(client[0].parameters["inodeURL"].removeprefix("file://"))
    for path in dict.fromkeys(paths):
        try:
            ns = resolver.resolve(NetnsSpec(path=path))
        except NsmError:
            continue  # gone, and what was in it
        removed = await netlink.run(lambda nl, ns=ns: delete_by_alias(nl.rtnl(ns), alias))  # type: ignore[misc]
        if removed:
            log.info("removed what an interrupted request built", id=entry.conn_id, netns=path)
    await netlink.run(lambda nl: nl.trim())
    ids = downstream_ids(entry.notes.get(DOWNSTREAM_ID, []))
    for url in entry.notes.get("downstream", []):
        down = Connection()
        down.CopyFrom(entry.request.connection)
        try:
            server_id = SpiffeId.parse(ids[url]) if url in ids else None
            channel = transport.aio_channel(parse_address(url), server_id)
        except (UrlError, TransportError, SpiffeIdError) as exc:
            log.warning("closing an interrupted request downstream failed", id=entry.conn_id, error=str(exc))
            continue
        try:
            metadata = OutgoingTokens(transport.identity).sign_for(down, ids.get(url, ""))
            await networkservice_pb2_grpc.NetworkServiceStub(channel).Close(down, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            log.warning("closing an interrupted request downstream failed", id=entry.conn_id, error=exc.details())
        finally:
            await channel.close(None)


@dataclass
class Outcome:
    """What the survey found: connections carried on as they were, rebuilt, undone, and
    waiting for a next hop that is away."""

    intact: int = 0
    rebuilt: int = 0
    undone: int = 0
    waiting: int = 0
    seconds: float = 0.0

    @property
    def kept(self) -> int:
        """Connections carried on, whole or rebuilt."""
        return self.intact + self.rebuilt


@dataclass
class Restore:
    """Carries on from the journal (see the module docstring); `run` once at start.

    Reads: the journal, the kernel's links in the namespaces it names. Provides: Monitor's
    view of every connection carried on, and each step's state once settled.
    """

    store: JournalStore
    chain: Chain
    begin: Begin
    events: ConnectionEvents
    agent_name: str
    resolver: NetnsResolver
    netlink: NetlinkThread
    timeout: float
    transport: Transport = LOCAL_ONLY  # how the next hops are called (closing what a restart undoes)
    # The up links' aliases in a namespace (the datapath; a fake in tests).
    aliases: Callable[[NetlinkThread, NetnsRef], set[str]] = link_aliases
    # Called once every connection is settled (WireGuard drops what none needs).
    on_settled: Callable[[], Awaitable[None]] | None = None
    # The node rebooted since the journal was written: nothing it holds can be there, every
    # entry is undone (its next hops closed: endpoint leases, other nodes' tunnels) at once.
    rebooted: bool = False
    # Whether the node's WireGuard device is there (the datapath; a fake in tests).
    wireguard_up: Callable[[NetlinkThread], bool] = wireguard_device_up
    _background: set[asyncio.Task[object]] = field(default_factory=set)
    _queued: dict[str, Entry] = field(default_factory=dict)  # intact, not replayed yet
    _waiting: list[Entry] = field(default_factory=list)  # their next hop away
    _wanted_early: set[str] = field(default_factory=set)  # asked for during the survey
    _surveying: bool = False

    async def run(self) -> Outcome:
        """The survey; the settling goes on in the background (`settled` awaits it)."""
        started = time.monotonic()
        entries = self.store.entries()
        # Before any await: a Request or Close of these waits for its replay (and hurries it).
        self.begin.hold([e.conn_id for e in entries], wanted=self._hurry)
        done = [e for e in entries if e.state == DONE and e.reply is not None and not self.rebooted]
        self._surveying = True
        try:
            present, wireguard_up = await self._survey(done)
        finally:
            self._surveying = False
        whole = [
            e
            for e in done
            if intact(namespaces_of(e), wire_alias(self.agent_name, e.conn_id), present)
            and (wireguard_up or not uses_wireguard(e))
        ]
        out = Outcome(intact=len(whole))
        for e in whole:
            assert e.reply is not None
            self.events.update(e.reply)
            self._queued[e.conn_id] = e
        for cid in self._wanted_early & set(self._queued):
            self._hurry(cid)
        self._wanted_early.clear()
        others = [e for e in entries if e.conn_id not in self._queued]
        bound = asyncio.Semaphore(REBUILD_CONCURRENCY)

        async def one(entry: Entry) -> str:
            async with bound:
                return await self._carry_on_or_undo(entry)

        outcomes = await asyncio.gather(*(one(e) for e in others))
        out.rebuilt, out.undone = outcomes.count("kept"), outcomes.count("undo")
        self._waiting += [e for e, o in zip(others, outcomes, strict=True) if o == "retry"]
        out.waiting = len(self._waiting)
        out.seconds = time.monotonic() - started
        self._spawn(self._settle(whole))
        return out

    def settling(self) -> bool:
        """Some journalled connection is still being replayed or waits for its next hop."""
        return bool(self._background)

    async def settled(self) -> None:
        """Until every journalled connection is settled (or given up)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop settling (the agent stops; the next start carries on from the journal)."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # ---------------------------------------------------------------------------
    async def _survey(self, entries: Iterable[Entry]) -> tuple[Present, bool]:
        """Each named namespace's up links' aliases (None for a namespace that is gone), and
        whether the node's WireGuard device is there."""
        entries = list(entries)
        refs: dict[str, NetnsRef | None] = {}
        for entry in entries:
            for path in namespaces_of(entry):
                if path not in refs:
                    try:
                        refs[path] = self.resolver.resolve(NetnsSpec(path=path))
                    except NsmError:
                        refs[path] = None
        wireguard = any(uses_wireguard(e) for e in entries)

        def look(nl: NetlinkThread) -> tuple[Present, bool]:
            found: dict[str, set[str] | None] = {}
            for path, ref in refs.items():
                try:
                    found[path] = self.aliases(nl, ref) if ref is not None else None
                except Exception:  # OSError, or the kernel's NetlinkError: not there to carry on
                    found[path] = None
            nl.trim()  # the replays open what they hold again
            return found, wireguard and self.wireguard_up(nl)

        return await self.netlink.run(look)

    async def _settle(self, whole: list[Entry]) -> None:
        started = time.monotonic()
        bound = asyncio.Semaphore(SETTLE_CONCURRENCY)

        async def one(entry: Entry) -> str:
            async with bound:
                return await self._settle_one(entry)

        try:
            outcomes = await asyncio.gather(*(one(e) for e in whole))
            if whole:
                log.info("every step holds its connections again", connections=outcomes.count("kept"),
                         seconds=round(time.monotonic() - started, 3))  # fmt: skip
            await self._retry(self._waiting)
        except Exception:
            log.exception("carrying on after restart failed")
        finally:
            if self.on_settled is not None:
                try:
                    await self.on_settled()
                except Exception:
                    log.exception("tidying up after restart failed")

    async def _settle_one(self, entry: Entry) -> str:
        """Replay one intact connection, unless its replay was taken already (hurried)."""
        if self._queued.pop(entry.conn_id, None) is None:
            return "taken"
        if not self._still_wanted(entry):
            self.begin.release(entry.conn_id)
            return "gone"  # closed from the journal meanwhile
        outcome = await self._carry_on_or_undo(entry)
        if outcome == "retry":
            self._waiting.append(entry)
        return outcome

    def _hurry(self, conn_id: str) -> None:
        """A Request or Close of a connection not settled yet: its replay goes now."""
        entry = self._queued.get(conn_id)
        if entry is not None:
            self._spawn(self._settle_one(entry))
        elif self._surveying:
            self._wanted_early.add(conn_id)  # hurried once the survey is done

    async def _retry(self, pending: list[Entry]) -> None:
        while pending:
            await asyncio.sleep(RETRY_EVERY)
            still = []
            for entry in pending:
                if not self._still_wanted(entry):
                    continue
                outcome = await self._carry_on_or_undo(entry)
                if outcome == "retry":
                    still.append(entry)
                elif outcome == "kept":
                    log.info("carried on after restart", connections=1, id=entry.conn_id)
            pending = still

    def _still_wanted(self, entry: Entry) -> bool:
        current = self.store.read(entry.conn_id)
        return current is not None and current.reply == entry.reply

    async def _carry_on_or_undo(self, entry: Entry) -> str:
        """kept, retry (the next hop is away), gone (closed meanwhile) or undo (and undone)."""
        try:
            outcome = await self._carry_on(entry)
        except Exception:  # one bad entry must not stop the others, nor the agent
            log.exception("restoring a connection failed", id=entry.conn_id)
            outcome = "undo"
        if outcome == "undo":
            await self._undo(entry)
        self.begin.release(entry.conn_id)
        return outcome

    async def _carry_on(self, entry: Entry) -> str:
        if entry.state != DONE or entry.reply is None or self.rebooted:
            return "undo"
        try:
            await self.chain.request(replay_request(entry), Call(replay=lambda: self._still_wanted(entry)))
            return "kept"
        except NsmError as exc:
            # CANCELLED is also what a call says whose channel was closed under it: only a
            # connection closed meanwhile is gone, else it is tried again like one whose next
            # hop is away (or it would stay in the journal, never expiring).
            if exc.code == grpc.StatusCode.CANCELLED and not self._still_wanted(entry):
                return "gone"
            if exc.code in AWAY and not _expired(entry):
                log.info("a connection's next hop is away; trying again", id=entry.conn_id, error=exc.message)
                return "retry"
            log.warning("a connection could not be carried on after restart", id=entry.conn_id, error=exc.message)
            return "undo"

    async def _undo(self, entry: Entry) -> None:
        await undo_entry(entry, self.store, self.events, self.agent_name, self.resolver, self.netlink, self.timeout,
                         self.transport)  # fmt: skip

    def _spawn(self, work: Coroutine[object, object, object]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


# A next hop that did not answer, for now.
AWAY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


def _expired(entry: Entry) -> bool:
    assert entry.reply is not None
    path = entry.reply.path
    caller = path.path_segments[path.index - 1] if path.index > 0 else path.path_segments[path.index]
    return ts_seconds(caller.expires) <= now()


async def undo_entry(
    entry: Entry,
    store: JournalStore,
    events: ConnectionEvents | None,
    agent_name: str,
    resolver: NetnsResolver,
    netlink: NetlinkThread,
    timeout: float,
    transport: Transport = LOCAL_ONLY,
) -> None:
    """Undo what the entry says (`undo_intent`), then forget it: journal and Monitor."""
    try:
        await undo_intent(entry, agent_name, resolver, netlink, timeout, transport)
    except Exception:
        log.exception("undoing an interrupted request failed", id=entry.conn_id)
    store.delete(entry.conn_id)
    if events is not None and entry.reply is not None:
        events.delete(entry.reply)


def journal_closer(
    store: JournalStore,
    agent_name: str,
    resolver: NetnsResolver,
    netlink: NetlinkThread,
    timeout: float,
    events: ConnectionEvents | None = None,
    transport: Transport = LOCAL_ONLY,
) -> Callable[[Connection], Awaitable[None]]:
    """Close of a connection known only to the journal (not yet carried on after a restart)."""

    async def close(conn: Connection) -> None:
        entry = store.read(conn.id)
        if entry is not None:
            log.info("closing a connection not yet carried on after restart", id=conn.id)
            await undo_entry(entry, store, events, agent_name, resolver, netlink, timeout, transport)

    return close
