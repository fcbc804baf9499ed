"""After a restart: carry on with what the journal says this agent holds.

Done entries are requested again through the chain, as a refresh would be: the
steps find the wires they built (by alias) and adopt them without touching the
traffic, the endpoints keep their leases, the other agents their tunnels.
Unfinished intents are undone from their notes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import structlog

from nsm_agent.datapath.links import delete_by_alias
from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.decisions.names import wire_alias
from nsm_agent.netns.resolve import NetnsResolver
from nsm_agent.netns.spec import NetnsSpec
from nsm_agent.state.journal import DONE, Entry, JournalStore
from nsm_api import networkservice_pb2_grpc
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.begin import Begin
from nsm_common.chain.chain import Call, Chain
from nsm_common.errors import NsmError
from nsm_common.grpcutil import aio_channel
from nsm_common.timeutil import now, ts_seconds
from nsm_common.urls import parse_address

log = structlog.get_logger("nsm.agent")


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


async def undo_intent(
    entry: Entry, agent_name: str, resolver: NetnsResolver, netlink: NetlinkThread, timeout: float
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
    for url in entry.notes.get("downstream", []):
        down = Connection()
        down.CopyFrom(entry.request.connection)
        channel = aio_channel(parse_address(url))
        try:
            await networkservice_pb2_grpc.NetworkServiceStub(channel).Close(down, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            log.warning("closing an interrupted request downstream failed", id=entry.conn_id, error=exc.details())
        finally:
            await channel.close(None)


async def restore(
    store: JournalStore,
    chain: Chain,
    begin: Begin,
    agent_name: str,
    resolver: NetnsResolver,
    netlink: NetlinkThread,
    timeout: float,
) -> tuple[int, int]:
    """Returns (connections carried on, interrupted requests undone).

    A connection whose next hop is unreachable right now (an endpoint or agent
    restarting too) is not torn down: it is tried again until it succeeds or
    its caller's lifetime runs out, and its client's refresh may come first.
    """
    kept = undone = 0
    pending = []
    entries = store.entries()
    begin.hold([e.conn_id for e in entries])
    for entry in entries:
        try:
            outcome = await _carry_on(entry, chain, store)
        except Exception:  # one bad entry must not stop the others, nor the agent
            log.exception("restoring a connection failed", id=entry.conn_id)
            outcome = "undo"
        if outcome == "kept":
            kept += 1
        elif outcome == "retry":
            pending.append(entry)
        elif outcome == "undo":
            await _undo(entry, store, agent_name, resolver, netlink, timeout)
            undone += 1
        begin.release(entry.conn_id)
    if pending:
        task = asyncio.get_running_loop().create_task(
            _retry(pending, store, chain, agent_name, resolver, netlink, timeout)
        )
        _background.add(task)
        task.add_done_callback(_background.discard)
    return kept, undone


_background: set[asyncio.Task[None]] = set()
RETRY_EVERY = 1.0


def retrying() -> bool:
    """Some journalled connection is still being tried again (its next hop was away)."""
    return bool(_background)


async def _carry_on(entry: Entry, chain: Chain, store: JournalStore) -> str:
    if entry.state != DONE or entry.reply is None:
        return "undo"

    def still_wanted() -> bool:
        current = store.read(entry.conn_id)
        return current is not None and current.reply == entry.reply

    try:
        await chain.request(replay_request(entry), Call(replay=still_wanted))
        return "kept"
    except NsmError as exc:
        if exc.code == grpc.StatusCode.CANCELLED:
            return "gone"
        if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and not _expired(entry):
            log.info("a connection's next hop is away; trying again", id=entry.conn_id, error=exc.message)
            return "retry"
        log.warning("a connection could not be carried on after restart", id=entry.conn_id, error=exc.message)
        return "undo"


def _expired(entry: Entry) -> bool:
    assert entry.reply is not None
    path = entry.reply.path
    caller = path.path_segments[path.index - 1] if path.index > 0 else path.path_segments[path.index]
    return ts_seconds(caller.expires) <= now()


async def _undo(
    entry: Entry, store: JournalStore, agent_name: str, resolver: NetnsResolver, netlink: NetlinkThread, timeout: float
) -> None:
    try:
        await undo_intent(entry, agent_name, resolver, netlink, timeout)
    except Exception:
        log.exception("undoing an interrupted request failed", id=entry.conn_id)
    store.delete(entry.conn_id)


async def _retry(
    pending: list[Entry],
    store: JournalStore,
    chain: Chain,
    agent_name: str,
    resolver: NetnsResolver,
    netlink: NetlinkThread,
    timeout: float,
) -> None:
    while pending:
        await asyncio.sleep(RETRY_EVERY)
        still = []
        for entry in pending:
            current = store.read(entry.conn_id)
            if current is None or current.reply != entry.reply:
                continue  # closed, or refreshed by its client meanwhile
            try:
                outcome = await _carry_on(entry, chain, store)
            except Exception:
                log.exception("restoring a connection failed", id=entry.conn_id)
                outcome = "undo"
            if outcome == "retry":
                still.append(entry)
            elif outcome == "undo":
                await _undo(entry, store, agent_name, resolver, netlink, timeout)
            elif outcome == "kept":
                log.info("carried on after restart", connections=1, id=entry.conn_id)
        pending = still


def journal_closer(
    store: JournalStore, agent_name: str, resolver: NetnsResolver, netlink: NetlinkThread, timeout: float
) -> Callable[[Connection], Awaitable[None]]:
    """Close of a connection known only to the journal (not yet carried on after a restart)."""

    async def close(conn: Connection) -> None:
        entry = store.read(conn.id)
        if entry is not None:
            log.info("closing a connection not yet carried on after restart", id=conn.id)
            await _undo(entry, store, agent_name, resolver, netlink, timeout)

    return close
