"""Path segments, ids and lifetimes (decisions/path.py)."""

import pytest

from nsm_api.connection_pb2 import Connection, Path, PathSegment
from nsm_common.chain import path
from nsm_common.errors import NsmError
from nsm_common.timeutil import ts_from, ts_seconds

NOW = 1_000_000.0


def client_conn(expires_in: float | None = 86400.0) -> Connection:
    seg = PathSegment(name="client", id="c-1")
    if expires_in is not None:
        seg.expires.CopyFrom(ts_from(NOW + expires_in))
    return Connection(id="c-1", path=Path(index=0, path_segments=[seg]))


def test_hop_appends_its_segment_and_caps_the_callers_lifetime() -> None:
    conn = client_conn()
    caller = path.enter(conn, "agent", NOW, default_lifetime=600, max_lifetime=60, new_id="a-1")
    assert [s.name for s in conn.path.path_segments] == ["client", "agent"]
    assert conn.path.index == 1 and conn.id == "a-1"
    assert ts_seconds(conn.path.path_segments[0].expires) == pytest.approx(NOW + 60)
    assert ts_seconds(conn.path.path_segments[1].expires) == pytest.approx(NOW + 600)
    path.leave(conn, caller)
    assert conn.path.index == 0 and conn.id == "c-1"


def test_caller_without_expiry_gets_the_default_and_a_shorter_ask_is_kept() -> None:
    conn = client_conn(expires_in=None)
    path.enter(conn, "agent", NOW, default_lifetime=30, max_lifetime=60)
    assert ts_seconds(conn.path.path_segments[0].expires) == pytest.approx(NOW + 30)
    conn = client_conn(expires_in=10)
    path.enter(conn, "agent", NOW, default_lifetime=30, max_lifetime=60)
    assert ts_seconds(conn.path.path_segments[0].expires) == pytest.approx(NOW + 10)


def test_refresh_reuses_the_hops_segment_and_id() -> None:
    conn = client_conn()
    caller = path.enter(conn, "agent", NOW, 600, 600, new_id="a-1")
    conn.path.path_segments.add(name="endpoint", id="e-1")
    path.leave(conn, caller)
    path.enter(conn, "agent", NOW + 5, 600, 600, new_id="a-2")
    assert conn.id == "a-1"
    assert [s.id for s in conn.path.path_segments] == ["c-1", "a-1", "e-1"]  # later hops are kept


def test_empty_path_makes_segment_zero() -> None:
    conn = Connection(id="x")
    caller = path.enter(conn, "agent", NOW, 600, 600)
    assert conn.path.path_segments[0].name == "agent" and conn.id == "x" and conn.path.index == 0
    assert caller.had_path is False


def test_id_that_does_not_match_the_callers_segment_is_refused() -> None:
    conn = client_conn()
    conn.id = "other"
    with pytest.raises(NsmError, match="does not equal"):
        path.enter(conn, "agent", NOW, 600, 600)


def test_index_past_the_end_is_refused() -> None:
    conn = client_conn()
    conn.path.index = 3
    with pytest.raises(NsmError, match="past the end"):
        path.enter(conn, "agent", NOW, 600, 600)


def test_find_own_id_on_close() -> None:
    conn = client_conn()
    caller = path.enter(conn, "agent", NOW, 600, 600, new_id="a-1")
    path.leave(conn, caller)
    assert path.find_own_id(conn, "agent") == "a-1"
    assert path.find_own_id(conn, "someone-else") is None


def test_a_stale_ask_gets_the_default_lifetime() -> None:
    conn = client_conn(expires_in=-5)
    path.enter(conn, "agent", NOW, default_lifetime=30, max_lifetime=60)
    assert ts_seconds(conn.path.path_segments[0].expires) == pytest.approx(NOW + 30)
