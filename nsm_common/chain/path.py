"""The path rules: each hop's segment, connection ids, and lifetimes. Pure."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from nsm_api.connection_pb2 import Connection
from nsm_common.errors import invalid
from nsm_common.timeutil import ts_from, ts_seconds

# Seconds a connection lives without a refresh when nobody says otherwise (upstream's 10 minutes).
DEFAULT_LIFETIME = 600.0


@dataclass(frozen=True)
class CallerPosition:
    """Where the caller stood in the path, to restore in the reply."""

    index: int
    id: str
    had_path: bool


def enter(
    conn: Connection,
    my_name: str,
    at: float,
    default_lifetime: float,
    max_lifetime: float,
    new_id: str | None = None,
) -> CallerPosition:
    """Move the connection's path to this hop; returns the caller's position.

    The caller's segment `expires` is capped at now + max_lifetime (a default
    when none is given): that is when this hop closes the connection unless it
    is requested again. This hop's own segment gets now + its default lifetime.
    """
    path = conn.path
    segments = path.path_segments
    if not segments:
        seg = segments.add(name=my_name, id=conn.id or new_id or str(uuid.uuid4()))
        seg.expires.CopyFrom(ts_from(at + default_lifetime))
        path.index = 0
        conn.id = seg.id
        return CallerPosition(index=0, id=seg.id, had_path=False)
    index = path.index
    if index >= len(segments):
        raise invalid(f"path index {index} is past the end of the path ({len(segments)} segments)")
    caller = segments[index]
    if conn.id and caller.id != conn.id:
        raise invalid(
            f"connection id {conn.id!r} does not equal the id {caller.id!r} of path segment {index} ({caller.name!r})"
        )
    asked = ts_seconds(caller.expires) if caller.HasField("expires") else 0.0
    cap = at + max_lifetime
    # No ask, or a stale one (a caller refreshing with the connection exactly as
    # returned): the default lifetime.
    caller.expires.CopyFrom(ts_from(min(asked, cap) if asked > at else min(at + default_lifetime, cap)))
    if index + 1 < len(segments) and segments[index + 1].name == my_name:
        mine = segments[index + 1]  # a refresh: keep our segment, its id, and the hops after us
    else:
        del segments[index + 1 :]
        mine = segments.add(name=my_name, id=new_id or str(uuid.uuid4()))
    mine.expires.CopyFrom(ts_from(at + default_lifetime))
    path.index = index + 1
    conn.id = mine.id
    return CallerPosition(index=index, id=caller.id, had_path=True)


def leave(conn: Connection, caller: CallerPosition) -> None:
    """Restore index and id to the caller's position (on the reply)."""
    conn.path.index = caller.index
    conn.id = caller.id


def find_own_id(conn: Connection, my_name: str) -> str | None:
    """On Close: this hop's segment id, from the segment after the caller's."""
    segments = conn.path.path_segments
    if not segments:
        return conn.id or None
    index = conn.path.index
    if index + 1 < len(segments) and segments[index + 1].name == my_name:
        return segments[index + 1].id
    if index < len(segments) and segments[index].name == my_name:
        return segments[index].id
    return None
