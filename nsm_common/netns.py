"""Working inside another network namespace from one thread, then coming back: the agent's
netlink thread, the client's prober and the benchmarks' baselines."""

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
