"""The Journal step: each connection written down before the steps after it act.

A new connection is an *intent* in the journal (`nsm_agent.state.journal`) before
any later step acts; steps that reach outside the agent (a namespace, an
endpoint) add a note first (`note`); a Request that completes turns
the entry into *done* with the reply. After a restart `nsm_agent.state.restore`
carries on from there.

Reads: the journal's entry for the connection id. Provides: `Journalled` (the
journal held it as done: a wire step adopts what the kernel has; what was noted
before, `noted`; and where steps note what they are about to reach, `note`,
`note_wire`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from nsm_agent.state.journal import DONE, INTENT, Entry, JournalStore
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Call, Next, Step


@dataclass(frozen=True)
class Journalled:
    """This call's journal entry: `done` when it was complete before this Request (the agent
    restarted, or this is a refresh), and `note` to record where a step is about to act."""

    done: bool
    note: Callable[..., None]
    # What the steps noted before this Request (where it reached: namespaces, downstream URLs).
    notes: Mapping[str, list[str]] = field(default_factory=dict)
    # Replace what is noted under a key (where the wire is now, not everywhere it ever was).
    replace: Callable[..., None] = field(default=lambda key, *values: None)


def note(call: Call, key: str, *values: str) -> None:
    """Record in the journal, before acting, that a step reaches `values` (a namespace, an endpoint)."""
    entry = call.get(Journalled)
    if entry is not None:
        entry.note(key, *values)


def note_wire(call: Call, *namespaces: str) -> None:
    """Record the namespaces the connection's wire is in now (`wire`; a restart's survey looks
    there), besides noting them among every namespace it reached (`netns`, for undoing)."""
    note(call, "netns", *namespaces)
    entry = call.get(Journalled)
    if entry is not None:
        entry.replace("wire", *namespaces)


def noted(call: Call, key: str) -> list[str]:
    """What the journal held noted under `key` for this connection before this Request (an
    entry that was done before it: a refresh, or carrying on after a restart); else nothing."""
    entry = call.get(Journalled)
    return list(entry.notes.get(key, [])) if entry is not None and entry.done else []


def journalled(call: Call) -> bool:
    """The journal held this connection as complete before this Request."""
    entry = call.get(Journalled)
    return entry is not None and entry.done


class Journal(Step):
    """Writes each connection down before later steps act. Sits right after Begin (which
    serialises each id), so entries never race. Reads and provides: see the module docstring."""

    def __init__(self, store: JournalStore) -> None:
        self.store = store

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        conn_id = request.connection.id
        existing = self.store.read(conn_id)
        if existing is None or existing.state != DONE:
            entry = Entry(conn_id, INTENT, _copy_request(request))
            self.store.write(entry)
        else:
            entry = existing

        def note(key: str, *values: str) -> None:
            """Record where a step is about to act, in one write for all `values`; the latest
            last (where a connection went most recently: a reselect back to an endpoint)."""
            held = entry.notes.setdefault(key, [])
            if held[len(held) - len(values) :] == list(values):
                return
            held[:] = [v for v in held if v not in values] + list(values)
            self.store.write(entry)

        def replace(key: str, *values: str) -> None:
            if entry.notes.get(key) != list(values):
                entry.notes[key] = list(values)
                self.store.write(entry)

        call.put(Journalled(entry is existing, note, {k: list(v) for k, v in entry.notes.items()}, replace))
        try:
            reply = await nxt.request(request, call)
            entry.state = DONE
            entry.reply = reply  # the store keeps it serialized, not this object
            self.store.write(entry)
        except BaseException:
            if entry is not existing:
                self.store.delete(conn_id)  # Begin, above, closes what the steps below still hold
            raise
        return reply

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        try:
            await nxt.close(conn, call)
        finally:
            self.store.delete(conn.id)


def _copy_request(request: NetworkServiceRequest) -> NetworkServiceRequest:
    out = NetworkServiceRequest()
    out.CopyFrom(request)
    return out
