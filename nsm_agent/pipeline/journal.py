"""The connection journal: what this agent holds, written down before it acts.

One log of changes in STATE_DIR/connections.log. A new connection is written
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

from google.protobuf.message import DecodeError

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
    """Entries in one append-only log, STATE_DIR/connections.log, a JSON line per change.

    An append is one `write` (a file per entry cost a create and a rename per
    change, four times per new connection). The last line a crash tore is
    ignored: the step that wrote it had not acted yet. The log is rewritten with
    one line per live entry on start and whenever it has grown well past that.
    """

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / "connections.log"
        # Only this agent writes here: after one read at start, memory is the
        # truth, and a Request costs no file read.
        self._entries: dict[str, Entry] = {}
        self._lines: dict[str, str] = {}  # each live entry's latest line, for compaction
        self._fd = -1
        self._appended = 0
        self._load()

    def write(self, entry: Entry) -> None:
        line = json.dumps(
            {
                "id": entry.conn_id,
                "state": entry.state,
                "request": base64.b64encode(entry.request.SerializeToString()).decode(),
                "reply": base64.b64encode(entry.reply.SerializeToString()).decode() if entry.reply else "",
                "notes": entry.notes,
            }
        )
        self._append(line)
        self._entries[entry.conn_id] = _snapshot(entry)
        self._lines[entry.conn_id] = line

    def read(self, conn_id: str) -> Entry | None:
        entry = self._entries.get(conn_id)
        return _snapshot(entry) if entry is not None else None

    def delete(self, conn_id: str) -> None:
        if self._entries.pop(conn_id, None) is not None:
            self._lines.pop(conn_id, None)
            self._append(json.dumps({"id": conn_id, "deleted": True}))

    def entries(self) -> list[Entry]:
        """Every entry (read again from the file: this is the start-up view)."""
        self._load()
        return [_snapshot(e) for e in self._entries.values()]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _append(self, line: str) -> None:
        os.write(self._fd, (line + "\n").encode())
        self._appended += 1
        if self._appended > 1000 + 2 * len(self._lines):
            self._compact()

    def _load(self) -> None:
        self.close()
        self._entries, self._lines = read_log(self.path)
        self._compact()

    def _compact(self) -> None:
        """Rewrite the log as one line per live entry; whole or not at all, also on a crash."""
        self.close()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in self._lines.values()))
        os.replace(tmp, self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._appended = 0


def read_log(path: Path) -> tuple[dict[str, Entry], dict[str, str]]:
    """The live entries of a journal log, and the line each was read from (safe while an agent writes)."""
    entries: dict[str, Entry] = {}
    lines: dict[str, str] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    for line in text.splitlines():
        try:
            data = json.loads(line)
            conn_id = str(data["id"])
            if data.get("deleted"):
                entries.pop(conn_id, None)
                lines.pop(conn_id, None)
            else:
                entries[conn_id] = _parse(data)
                lines[conn_id] = line
        except (ValueError, KeyError, TypeError, DecodeError):
            continue  # a line torn by a crash
    return entries, lines


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
