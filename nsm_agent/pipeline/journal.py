"""The Journal step: each connection written down before the steps after it act.

A new connection is an *intent* in the journal (`nsm_agent.state.journal`) before
any later step acts; steps that reach outside the agent (a namespace, an
endpoint) add a note first through `call.note`; a Request that completes turns
the entry into *done* with the reply. After a restart `nsm_agent.state.restore`
carries on from there.

Reads: the journal's entry for the connection id. Provides: `call.journalled`
(the journal held it as done: a wire step adopts what the kernel has) and
`call.note`.
"""

from __future__ import annotations

from nsm_agent.pipeline.call import AgentCall
from nsm_agent.state.journal import DONE, INTENT, Entry, JournalStore
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Next, Step


class Journal(Step[AgentCall]):
    """Writes each connection down before later steps act. Sits right after Begin (which
    serialises each id), so entries never race. Reads and provides: see the module docstring."""

    def __init__(self, store: JournalStore) -> None:
        self.store = store

    async def request(self, request: NetworkServiceRequest, call: AgentCall, nxt: Next[AgentCall]) -> Connection:
        conn_id = request.connection.id
        existing = self.store.read(conn_id)
        if existing is None or existing.state != DONE:
            entry = Entry(conn_id, INTENT, _copy_request(request))
            self.store.write(entry)
        else:
            entry = existing
            call.journalled = True

        def note(key: str, *values: str) -> None:
            """Record where a step is about to act, in one write for all `values`."""
            held = entry.notes.setdefault(key, [])
            new = [v for v in values if v not in held]
            if new:
                held.extend(new)
                self.store.write(entry)

        call.note = note
        try:
            reply = await nxt.request(request, call)
        except BaseException:
            if entry.state == INTENT:
                self.store.delete(conn_id)  # the steps undid their own work
            raise
        entry.state = DONE
        entry.reply = reply  # the store keeps it serialized, not this object
        self.store.write(entry)
        return reply

    async def close(self, conn: Connection, call: AgentCall, nxt: Next[AgentCall]) -> None:
        try:
            await nxt.close(conn, call)
        finally:
            self.store.delete(conn.id)


def _copy_request(request: NetworkServiceRequest) -> NetworkServiceRequest:
    out = NetworkServiceRequest()
    out.CopyFrom(request)
    return out
