"""The connection journal: what this agent holds, written down before it acts.

One file per connection in STATE_DIR/connections. A new connection is written
as an *intent* before any step acts; steps that reach outside the agent (a
namespace, an endpoint) add a note first; a Request that completes turns the
entry into *done* with the reply. After a restart, done entries are requested
again through the chain (steps adopt what the kernel still has), and intents
are undone from their notes: so a `kill -9` in the middle of a Request leaves
nothing behind, even a veth whose ends are both in pods.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from nsm_agent.pipeline.chain import Call, Next, Step
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest

INTENT = "intent"
DONE = "done"


@dataclass
class Entry:
    conn_id: str
    state: str
    request: NetworkServiceRequest
    reply: Connection | None = None
    notes: dict[str, list[str]] = field(default_factory=dict)


class JournalStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "connections"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Only this agent writes here: after one read at start, memory is the
        # truth, and a Request costs no file read.
        self._entries = {e.conn_id: e for e in self._load()}

    def _path(self, conn_id: str) -> Path:
        safe = base64.urlsafe_b64encode(conn_id.encode()).decode().rstrip("=")
        return self.dir / f"{safe}.json"

    def write(self, entry: Entry) -> None:
        data = {
            "id": entry.conn_id,
            "state": entry.state,
            "request": base64.b64encode(entry.request.SerializeToString()).decode(),
            "reply": base64.b64encode(entry.reply.SerializeToString()).decode() if entry.reply else "",
            "notes": entry.notes,
        }
        path = self._path(entry.conn_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)  # whole entry or the previous one, also on a crash
        self._entries[entry.conn_id] = _snapshot(entry)

    def read(self, conn_id: str) -> Entry | None:
        entry = self._entries.get(conn_id)
        return _snapshot(entry) if entry is not None else None

    def delete(self, conn_id: str) -> None:
        self._entries.pop(conn_id, None)
        self._path(conn_id).unlink(missing_ok=True)

    def entries(self) -> list[Entry]:
        """Everything on disk (read again: this is the start-up view)."""
        self._entries = {e.conn_id: e for e in self._load()}
        return [_snapshot(e) for e in self._entries.values()]

    def _load(self) -> list[Entry]:
        out = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                out.append(self._parse(json.loads(path.read_text())))
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)  # a torn file can only be an unfinished intent
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        return out

    @staticmethod
    def _parse(data: dict[str, object]) -> Entry:
        request = NetworkServiceRequest.FromString(base64.b64decode(str(data["request"])))
        reply = Connection.FromString(base64.b64decode(str(data["reply"]))) if data.get("reply") else None
        notes = {str(k): [str(x) for x in v] for k, v in dict(data.get("notes") or {}).items()}  # type: ignore[call-overload]
        return Entry(str(data["id"]), str(data["state"]), request, reply, notes)


class Journal(Step):
    """Sits right after Begin (which serialises each id), so entries never race."""

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
        entry.reply = Connection()
        entry.reply.CopyFrom(reply)
        self.store.write(entry)
        return reply

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        try:
            await nxt.close(conn, call)
        finally:
            self.store.delete(conn.id)


def _snapshot(entry: Entry) -> Entry:
    """A copy callers may change without changing what the store holds."""
    reply = None
    if entry.reply is not None:
        reply = Connection()
        reply.CopyFrom(entry.reply)
    return Entry(entry.conn_id, entry.state, _copy_request(entry.request), reply,
                 {k: list(v) for k, v in entry.notes.items()})  # fmt: skip


def _copy_request(request: NetworkServiceRequest) -> NetworkServiceRequest:
    out = NetworkServiceRequest()
    out.CopyFrom(request)
    return out
