"""Turn a NetnsSpec into a namespace that exists, never creating one."""

from __future__ import annotations

import os
from dataclasses import dataclass

import grpc

from nsm_agent.netns.spec import NetnsSpec
from nsm_common.errors import NsmError, invalid, not_found

NAMED_DIRS = ("/var/run/netns", "/run/netns")


@dataclass(frozen=True)
class NetnsRef:
    """A network namespace that exists now, with a path that opens it."""

    path: str
    dev: int
    ino: int

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name may hold spaces and parentheses: split after the last ')'.
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def host_netns() -> os.stat_result | None:
    """The host's namespace: PID 1's, or where PID 1 is hidden, the topmost readable ancestor's."""
    st = _stat("/proc/1/ns/net")
    if st is not None:
        return st
    found = None
    pid = os.getpid()
    while pid > 1:
        st = _stat(f"/proc/{pid}/ns/net")
        if st is not None:
            found = st
        pid = _parent(pid)
    return found


class NetnsResolver:
    """Finds namespaces by path or inode; refuses the agent's own and the host's."""

    def __init__(self) -> None:
        own = os.stat("/proc/self/ns/net")
        self.nsfs_dev = own.st_dev
        self.forbidden = {(own.st_dev, own.st_ino): "the agent's own network namespace"}
        host = host_netns()
        if host is not None:
            self.forbidden.setdefault((host.st_dev, host.st_ino), "the host's network namespace")
        self._by_inode: dict[int, str] = {}

    def resolve(self, spec: NetnsSpec) -> NetnsRef:
        if spec.path:
            try:
                st = os.stat(spec.path)
            except PermissionError as exc:
                raise NsmError(grpc.StatusCode.PERMISSION_DENIED, f"the agent may not open {spec.path}") from exc
            except OSError as exc:
                raise not_found(f"network namespace {spec.path} does not exist") from exc
            ref = NetnsRef(spec.path, st.st_dev, st.st_ino)
            if st.st_dev != self.nsfs_dev:
                raise invalid(f"{spec.path} is not a network namespace")
            if spec.ino is not None and spec.ino != st.st_ino:
                raise invalid(f"{spec.path} has inode {st.st_ino}, not netnsInode {spec.ino}")
        else:
            assert spec.ino is not None
            found = self._find_inode(spec.ino, spec.dev)
            if found is None:
                raise not_found(f"no network namespace with {spec} exists on this node")
            ref = found
        why = self.forbidden.get(ref.key)
        if why:
            raise invalid(f"{spec} is {why}; a connection needs the pod's namespace")
        return ref

    def find(self, ns: NetnsRef) -> NetnsRef | None:
        """The namespace `ns` by its inode, at whatever path opens it now (a process of it
        exited, another holds it); None when nothing on the node holds it any more."""
        return self._find_inode(ns.ino, ns.dev)

    def _find_inode(self, ino: int, dev: int | None) -> NetnsRef | None:
        if dev is not None and dev != self.nsfs_dev:
            return None
        cached = self._by_inode.get(ino)
        if cached:
            st = _stat(cached)
            if st is not None and st.st_ino == ino and st.st_dev == self.nsfs_dev:
                return NetnsRef(cached, st.st_dev, st.st_ino)
            del self._by_inode[ino]
        for path in self._candidates():
            st = _stat(path)
            if st is not None and st.st_ino == ino and st.st_dev == self.nsfs_dev:
                self._by_inode[ino] = path
                return NetnsRef(path, st.st_dev, st.st_ino)
        return None

    @staticmethod
    def _candidates() -> list[str]:
        # Named namespaces first: few, and their paths outlive any process.
        paths: list[str] = []
        for d in NAMED_DIRS:
            try:
                paths.extend(os.path.join(d, n) for n in sorted(os.listdir(d)))
            except OSError:
                continue
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                paths.append(f"/proc/{pid}/ns/net")
        return paths
