"""How a KERNEL mechanism names a network namespace. Pure parsing."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from nsm_common.errors import invalid

_PROC_NS = re.compile(r"^/proc/(\d+)/ns/net$")
_NAMED_NS = re.compile(r"^/(?:var/)?run/netns/([^/]+)$")


@dataclass(frozen=True)
class NetnsSpec:
    """A namespace named by a path we may open, or by inode (device optional)."""

    path: str | None = None
    ino: int | None = None
    dev: int | None = None

    def __str__(self) -> str:
        if self.path:
            return self.path
        return f"inode://{self.dev}/{self.ino}" if self.dev is not None else f"inode {self.ino}"


def parse_netns(params: Mapping[str, str]) -> NetnsSpec:
    """Read `inodeURL` and/or `netnsInode` from KERNEL mechanism parameters."""
    url = params.get("inodeURL", "")
    bare = params.get("netnsInode", "")
    ino_hint: int | None = None
    if bare:
        if not bare.isdigit():
            raise invalid(f"netnsInode {bare!r} is not a decimal inode number")
        ino_hint = int(bare)
    if not url:
        if ino_hint is None:
            raise invalid("the KERNEL mechanism names no network namespace: give inodeURL or netnsInode")
        return NetnsSpec(ino=ino_hint)
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unbalanced [ or ]
        raise invalid(f"inodeURL {url!r}: {exc}") from None
    if parts.scheme == "file":
        path = parts.path
        if parts.netloc:
            raise invalid(f"inodeURL {url!r}: a file URL must look like file:///PATH")
        if path.startswith(("/proc/self", "/proc/thread-self")):
            raise invalid(f"inodeURL {url!r}: /proc/self names the agent's own namespace, not the pod's")
        if not (_PROC_NS.match(path) or _NAMED_NS.match(path)):
            raise invalid(f"inodeURL {url!r}: expected file:///proc/PID/ns/net or file:///var/run/netns/NAME")
        m = _NAMED_NS.match(path)
        if m and m.group(1) in (".", ".."):
            raise invalid(f"inodeURL {url!r}: bad namespace name")
        return NetnsSpec(path=path, ino=ino_hint)
    if parts.scheme == "inode":
        dev_s, ino_s = parts.netloc, parts.path.lstrip("/")
        if not (dev_s.isdigit() and ino_s.isdigit()):
            raise invalid(f"inodeURL {url!r}: expected inode://DEV/INO with decimal numbers")
        ino = int(ino_s)
        if ino_hint is not None and ino_hint != ino:
            raise invalid(f"inodeURL {url!r} and netnsInode {bare} name different namespaces")
        return NetnsSpec(ino=ino, dev=int(dev_s))
    raise invalid(f"inodeURL {url!r}: unknown scheme; expected file:// or inode://")
