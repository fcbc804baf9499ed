"""gRPC servers and channels with the options every component uses."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from nsm_common.limits import LIMIT_OPTIONS, PeerLimit
from nsm_common.urls import Address

if TYPE_CHECKING:
    from nsm_common.identity.transport import Transport

# Keepalive on both sides so that a dead peer breaks long streams (Monitor,
# watch Find) instead of leaving them hanging forever.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Without a pool of its own, a new channel inherits the reconnect backoff of
    # an old one to the same address (a restarted endpoint would stay "down").
    ("grpc.use_local_subchannel_pool", 1),
    # A peer that restarts (registry, agent, endpoint) is found again within a
    # couple of seconds, not after gRPC's default backoff of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # Despite its name, C-core reads this as the time a connection attempt (TCP, TLS,
    # HTTP/2 SETTINGS) may take, at least. At 100 ms a call that does not wait for ready
    # failed on its first attempt whenever the peer's handshake was slower than that: 3
    # VMs under software emulation ("timed out before receiving SETTINGS frame"). 5 s,
    # as long as keepalive gives a silent peer; a refused connection still fails at once.
    ("grpc.min_reconnect_backoff_ms", 5000),
]
SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.so_reuseport", 0),
]


def aio_server() -> grpc.aio.Server:
    """An asyncio gRPC server with the keepalive and the limits every component uses (message
    and metadata size, streams per connection, calls per peer: nsm_common/limits.py)."""
    return grpc.aio.server(options=SERVER_OPTIONS + LIMIT_OPTIONS, interceptors=[PeerLimit()])


def bind_all(server: grpc.aio.Server, addresses: Sequence[Address], transport: Transport) -> None:
    """Bind every address (TCP as TRANSPORT says: mutual TLS, or plaintext when insecure);
    a stale unix socket file from a dead process is replaced."""
    for addr in addresses:
        if addr.scheme == "unix":
            replace_unix_socket(addr.path)
        bound = transport.bind(server, addr)
        if addr.scheme == "tcp" and bound == 0:
            raise OSError(f"cannot listen on {addr}")


def replace_unix_socket(path: str) -> None:
    """Make way for a unix socket at PATH: its folder made, a stale socket file removed."""
    os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def remove_unix_sockets(addresses: Sequence[Address]) -> None:
    for addr in addresses:
        if addr.scheme == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(addr.path)


# Servicer methods take this; the request and response types are on the method.
Ctx = grpc.aio.ServicerContext[Any, Any]
