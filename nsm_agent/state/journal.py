"""The connection journal: what this agent holds, written down before it acts.

One log of changes in STATE_DIR/connections.log, opened by a line naming its
format and version. A new connection is written
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

from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest

INTENT = "intent"
DONE = "done"
# The note of the SPIFFE ID each downstream URL's server had to prove: "URL ID".
DOWNSTREAM_ID = "downstream_id"


def downstream_ids(notes: list[str]) -> dict[str, str]:
    """URL to the SPIFFE ID its server had to prove, from the DOWNSTREAM_ID notes."""
    return dict(text.split(" ", 1) for text in notes if " " in text)


FORMAT = "nsm-connection-journal"
# 1: the log opens with {"format": FORMAT, "version": 1}; entry lines as in 0.
# 0: the log of the first releases, entry lines only (read, and rewritten as 1).
VERSION = 1
READS = (0, 1)


class JournalFormatError(Exception):
    """A journal this agent cannot read: it refuses to start rather than guess."""


@dataclass
class Entry:
    conn_id: str
    state: str
    request: NetworkServiceRequest
    reply: Connection | None = None
    notes: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Stored:
    """An entry as kept in memory: serialized, a fraction of the parsed messages' size."""

    state: str
    request: bytes
    reply: bytes
    notes: dict[str, tuple[str, ...]]

    def line(self, conn_id: str) -> str:
        return json.dumps(
            {
                "id": conn_id,
                "state": self.state,
                "request": base64.b64encode(self.request).decode(),
                "reply": base64.b64encode(self.reply).decode(),
                "notes": {k: list(v) for k, v in self.notes.items()},
            }
        )

    def entry(self, conn_id: str) -> Entry:
        """A fresh Entry, the caller's to change."""
        reply = Connection.FromString(self.reply) if self.reply else None
        notes = {k: list(v) for k, v in self.notes.items()}
        return Entry(conn_id, self.state, NetworkServiceRequest.FromString(self.request), reply, notes)


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
        self._stored: dict[str, _Stored] = {}
        self._fd = -1
        self._appended = 0
        self._load()

    def write(self, entry: Entry) -> None:
        stored = _Stored(
            entry.state,
            entry.request.SerializeToString(),
            entry.reply.SerializeToString() if entry.reply is not None else b"",
            {k: tuple(v) for k, v in entry.notes.items()},
        )
        # In memory first: an append that compacts the log writes what memory holds, this too.
        self._stored[entry.conn_id] = stored
        self._append(stored.line(entry.conn_id))

    def holds(self, conn_id: str) -> bool:
        """The journal has this connection as complete (after a restart, maybe not carried on yet)."""
        stored = self._stored.get(conn_id)
        return stored is not None and stored.state == DONE

    def read(self, conn_id: str) -> Entry | None:
        stored = self._stored.get(conn_id)
        return stored.entry(conn_id) if stored is not None else None

    def delete(self, conn_id: str) -> None:
        if self._stored.pop(conn_id, None) is not None:
            self._append(json.dumps({"id": conn_id, "deleted": True}))

    def entries(self) -> list[Entry]:
        """Every entry (read again from the file: this is the start-up view)."""
        self._load()
        return [stored.entry(conn_id) for conn_id, stored in self._stored.items()]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _append(self, line: str) -> None:
        os.write(self._fd, (line + "\n").encode())
        self._appended += 1
        if self._appended > 1000 + 2 * len(self._stored):
            self._compact()

    def _load(self) -> None:
        self.close()
        self._stored = _read(self.path)
        self._compact()

    def _compact(self) -> None:
        """Rewrite the log as one line per live entry; whole or not at all, also on a crash."""
        self.close()
        tmp = self.path.with_suffix(".tmp")
        lines = [json.dumps({"format": FORMAT, "version": VERSION})]
        lines += [stored.line(conn_id) for conn_id, stored in self._stored.items()]
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._appended = 0


def read_log(path: Path) -> dict[str, Entry]:
    """The live entries of a journal log (safe to call while an agent writes it)."""
    return {conn_id: stored.entry(conn_id) for conn_id, stored in _read(path).items()}


def _version(path: Path, first: str) -> int:
    """The format version a log's first line declares (0: none, the first releases' log)."""
    try:
        data = json.loads(first)
    except ValueError:
        return 0  # torn or foreign: an entry line that the reader skips
    if not isinstance(data, dict) or "format" not in data:
        return 0
    version = data.get("version")
    if data["format"] != FORMAT or not isinstance(version, int) or version not in READS:
        raise JournalFormatError(
            f"{path} is a {data['format']!r} journal of version {version!r}; this agent reads "
            f"{FORMAT!r} versions {', '.join(map(str, READS))}. It was written by another (newer?) "
            "agent: run that one, or move the file away to start without the connections it holds. "
            "Nothing was changed."
        )
    return version


def _read(path: Path) -> dict[str, _Stored]:
    out: dict[str, _Stored] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    lines = text.splitlines()
    if lines and _version(path, lines[0]) > 0:
        lines = lines[1:]
    for line in lines:
        try:
            data = json.loads(line)
            conn_id = str(data["id"])
            if data.get("deleted"):
                out.pop(conn_id, None)
                continue
            stored = _Stored(
                str(data["state"]),
                base64.b64decode(str(data["request"])),
                base64.b64decode(str(data["reply"] or "")),
                {str(k): tuple(str(x) for x in v) for k, v in dict(data.get("notes") or {}).items()},
            )
            NetworkServiceRequest.FromString(stored.request)  # a torn or foreign line fails here
        except (ValueError, KeyError, TypeError, AttributeError, DecodeError):
            continue  # a line torn by a crash
        out[conn_id] = stored
    return out
