"""Monitor selectors and listen addresses."""

import pytest

from nsm_api.connection_pb2 import Connection, MonitorScopeSelector, Path, PathSegment
from nsm_common.chain.monitor_scope import selects
from nsm_common.urls import UrlError, parse_address

CONN = Connection(
    network_service="web",
    path=Path(
        path_segments=[
            PathSegment(name="client", id="c1"),
            PathSegment(name="agent", id="a1"),
            PathSegment(name="ep", id="e1"),
        ]
    ),
)


def sel(*segs: PathSegment, services: tuple[str, ...] = ()) -> MonitorScopeSelector:
    return MonitorScopeSelector(path_segments=list(segs), network_services=list(services))


def test_selectors() -> None:
    assert selects(sel(), CONN)
    assert selects(sel(PathSegment(id="c1")), CONN)
    assert selects(sel(PathSegment(name="agent"), PathSegment(id="e1")), CONN)
    assert not selects(sel(PathSegment(id="c1"), PathSegment(id="e1")), CONN)  # not contiguous
    assert not selects(sel(PathSegment(id="zz")), CONN)
    assert selects(sel(services=("web",)), CONN)
    assert not selects(sel(PathSegment(id="c1"), services=("db",)), CONN)


def test_addresses() -> None:
    assert parse_address("unix:///run/a.sock").grpc_target == "unix:///run/a.sock"
    assert parse_address("tcp://127.0.0.1:5002").grpc_target == "127.0.0.1:5002"
    assert parse_address("tcp://[::1]:5002").grpc_target == "[::1]:5002"
    assert parse_address("tcp://host", default_port=5002).port == 5002
    for bad in ("", "http://x:1", "tcp://:5", "unix://relative", "tcp://h:99999"):
        with pytest.raises(UrlError):
            parse_address(bad)
