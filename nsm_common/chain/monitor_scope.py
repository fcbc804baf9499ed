"""Which connections a MonitorScopeSelector selects. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from nsm_api.connection_pb2 import Connection, MonitorScopeSelector, PathSegment


def _segment_matches(want: PathSegment, have: PathSegment) -> bool:
    return (
        (not want.name or want.name == have.name)
        and (not want.id or want.id == have.id)
        and (not want.token or want.token == have.token)
    )


def _contains_run(path: Sequence[PathSegment], run: Sequence[PathSegment]) -> bool:
    if not run:
        return True
    for start in range(len(path) - len(run) + 1):
        if all(_segment_matches(run[i], path[start + i]) for i in range(len(run))):
            return True
    return False


def selects(selector: MonitorScopeSelector, conn: Connection) -> bool:
    """Whether `selector` picks `conn`: one of its services, and its path segments as a run in the path."""
    if selector.network_services and conn.network_service not in selector.network_services:
        return False
    return _contains_run(conn.path.path_segments, selector.path_segments)
