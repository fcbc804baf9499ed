"""After a restart: carry on with what the journal says this agent holds.

Done entries are requested again through the chain, as a refresh would be: the
steps find the wires they built (by alias) and adopt them without touching the
traffic, the endpoints keep their leases, the other agents their tunnels.
Unfinished intents are undone from their notes.
"""

from __future__ import annotations

import grpc
import structlog

from nsm_agent.datapath.links import delete_by_alias
from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.decisions.names import wire_alias
from nsm_agent.netns.resolve import NetnsResolver
from nsm_agent.netns.spec import NetnsSpec
from nsm_agent.pipeline.chain import Chain
from nsm_agent.pipeline.journal import DONE, Entry, JournalStore
from nsm_api import networkservice_pb2_grpc
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.errors import NsmError
from nsm_common.grpcutil import aio_channel
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
        removed = await netlink.run(lambda nl, ns=ns: delete_by_alias(nl.socket(ns), alias))  # type: ignore[misc]
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
    store: JournalStore, chain: Chain, agent_name: str, resolver: NetnsResolver, netlink: NetlinkThread, timeout: float
) -> tuple[int, int]:
    """Returns (connections carried on, interrupted requests undone)."""
    kept = undone = 0
    for entry in store.entries():
        if entry.state == DONE and entry.reply is not None:
            try:
                await chain.request(replay_request(entry))
                kept += 1
                continue
            except NsmError as exc:
                log.warning("a connection could not be carried on after restart", id=entry.conn_id, error=exc.message)
        await undo_intent(entry, agent_name, resolver, netlink, timeout)
        store.delete(entry.conn_id)
        undone += 1
    return kept, undone
