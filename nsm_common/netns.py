"""Network namespaces as people name them (`ip netns` name, path, PID), and working inside one
from a thread. Shared by the agent, the client runtime and the test bed."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from pyroute2.netns import setns

T = TypeVar("T")


def inside(path: str, fn: Callable[[], T], key: tuple[int, int] | None = None) -> T:
    """`fn()` run on this thread inside the namespace at `path` (only this thread moves).

    A netlink socket stays bound to the namespace it was opened in, and a child
    process starts in its parent thread's: so opening one here, or spawning,
    costs far less than pyroute2's IPRoute(netns=...), which forks. With `key`
    (device, inode), a namespace replaced under that path is refused.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            if key is not None:
                st = os.fstat(target)
                if (st.st_dev, st.st_ino) != key:
                    raise FileNotFoundError(f"network namespace {path} was replaced")
            setns(target, flags=0)
            try:
                return fn()
            finally:
                setns(home, flags=0)
        finally:
            os.close(target)
    finally:
        os.close(home)


def netns_path(value: str) -> str:
    """`NAME` → /var/run/netns/NAME, `PID` → /proc/PID/ns/net, a path stays; must exist."""
    if not value:
        raise ValueError("network namespace is empty")
    if value.startswith("/"):
        path = value
    elif value.isdigit():
        path = f"/proc/{value}/ns/net"
    else:
        if "/" in value or value in (".", ".."):
            raise ValueError(f"{value!r} is not a namespace name")
        path = f"/var/run/netns/{value}"
    if not os.path.exists(path):
        raise ValueError(f"network namespace {value!r} does not exist ({path})")
    return path
