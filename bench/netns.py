"""Sockets opened inside a namespace, for the hand-built baselines."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from pyroute2.netns import setns

T = TypeVar("T")


def open_in(path: str, factory: Callable[[], T]) -> T:
    """`factory()` run on this thread inside the namespace at `path`: netlink sockets
    stay bound where they were opened, and a child process starts where its parent's
    thread is."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        setns(target, flags=0)
        return factory()
    finally:
        setns(home, flags=0)
        os.close(target)
        os.close(home)
