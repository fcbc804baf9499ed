"""The claim socket (`--claim-socket`): where a pod asks for a socket of its own, in a folder
of its own, without anyone on the node naming it.

At admission a pod has neither name nor UID yet, so nothing can tell the agent beforehand
which pod a socket is for. Instead the pod's client container proves it: it connects here
and passes, as SCM_RIGHTS, its own network namespace and an open folder (the pod's
emptyDir). A process can open only namespaces and folders it can reach, so what it passes
is its pod's. The agent checks both, binds the pod's socket inside that folder
(`/proc/self/fd/N/nsm.io.sock`: through the descriptor, so no path the pod controls is
followed) and answers with one JSON line. Where the caller's process is visible
(the agent runs with hostPID), its namespace must also be the one it passed.

The wire: one message, a JSON object (`{}`: nothing to ask yet) with two descriptors,
the namespace first; the answer {"socket": "nsm.io.sock", "inode": N} or {"error": "..."}.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import socket
import stat
import struct
from dataclasses import dataclass

import structlog

from nsm_agent.pods.sockets import PodSockets
from nsm_common.errors import NsmError
from nsm_common.grpcutil import replace_unix_socket

log = structlog.get_logger("nsm.agent")

SOCKET_FILE = "nsm.io.sock"  # where upstream's clients look in /var/lib/networkservicemesh
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3): which kind of namespace a descriptor is
CLONE_NEWNET = 0x40000000  # its answer for a network namespace (os has it from Python 3.12)
MAX_MESSAGE = 4096
WAIT = 5.0  # seconds a caller has to send its claim
MAX_WAITING = 16  # claims read at once


class ClaimError(Exception):
    """A claim refused; the message is for the person whose pod asked."""


@dataclass(frozen=True)
class Peer:
    pid: int  # 0 where the caller's process is not visible from the agent
    uid: int
    gid: int


def folder_refusal(st: os.stat_result, peer: Peer) -> str | None:
    """Why the agent may not put a socket into the folder of stat ST for PEER, or None.
    The pod may get a socket only where it could have made a file itself."""
    if not stat.S_ISDIR(st.st_mode):
        return "the second descriptor is not a folder"
    if peer.uid == 0:
        return None
    mode = st.st_mode
    if (st.st_uid == peer.uid and mode & stat.S_IWUSR) or (st.st_gid == peer.gid and mode & stat.S_IWGRP):
        return None
    if mode & stat.S_IWOTH:
        return None
    return f"the folder passed is not writable by uid {peer.uid}"


def message_refusal(body: bytes, fds: list[int], truncated: bool) -> str | None:
    """Why a claim message is malformed, or None."""
    if truncated:
        return "too many descriptors: pass two, the pod's network namespace and its socket folder"
    if len(fds) != 2:
        return f"{len(fds)} descriptors passed: pass two, the pod's network namespace and its socket folder"
    try:
        asked = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return "the claim is not JSON"
    if not isinstance(asked, dict) or asked:
        return "the claim is an empty JSON object ({})"
    return None


def _peer(conn: socket.socket) -> Peer:
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return Peer(pid, uid, gid)


def _netns_ino(fd: int, peer: Peer) -> tuple[int, int]:
    """The (dev, inode) of the namespace FD, checked to be a network namespace and, where
    visible, the caller's own."""
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = 0
    if kind != CLONE_NEWNET:
        raise ClaimError("the first descriptor is not a network namespace")
    st = os.fstat(fd)
    if peer.pid > 0:
        try:
            own = os.stat(f"/proc/{peer.pid}/ns/net")
        except OSError:  # gone already, or hidden: the descriptor is the proof
            own = None
        if own is not None and (own.st_dev, own.st_ino) != (st.st_dev, st.st_ino):
            raise ClaimError("the network namespace passed is not the caller's own")
    return st.st_dev, st.st_ino


class ClaimServer:
    """Serves claims, one at a time (they come once per pod, and again after an agent restart)."""

    def __init__(self, path: str, pods: PodSockets) -> None:
        self.path = path
        self.pods = pods
        self._listener: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    def bind(self) -> None:
        """Make the socket (mode 0666: mounted into the pods that ask for services); raises OSError."""
        replace_unix_socket(self.path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._listener.bind(self.path)
            os.chmod(self.path, 0o666)
            self._listener.listen(64)
        except OSError:
            self.close()
            raise
        self._listener.setblocking(False)

    def start(self) -> None:
        """Take claims (from a running event loop)."""
        self._task = asyncio.create_task(self._accept_loop())
        log.info("claim socket serving", socket=self.path)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.close()

    def close(self) -> None:
        """Stop listening and remove the socket."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _accept_loop(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        busy = asyncio.Semaphore(MAX_WAITING)  # a caller that sends nothing holds up no one else
        serving: set[asyncio.Task[None]] = set()
        try:
            while True:
                conn, _ = await loop.sock_accept(self._listener)
                await busy.acquire()
                task = asyncio.create_task(self._serve_one(conn, busy))
                serving.add(task)
                task.add_done_callback(serving.discard)
        finally:
            for task in list(serving):
                task.cancel()
            await asyncio.gather(*serving, return_exceptions=True)

    async def _serve_one(self, conn: socket.socket, busy: asyncio.Semaphore) -> None:
        try:
            answer = await self._handle(conn)
            await asyncio.to_thread(conn.sendall, json.dumps(answer).encode() + b"\n")
        except OSError as exc:  # the caller went away: nothing of it was kept
            log.info("claim dropped", error=str(exc))
        finally:
            conn.close()
            busy.release()

    async def _handle(self, conn: socket.socket) -> dict[str, object]:
        conn.setblocking(True)
        conn.settimeout(WAIT)
        peer = _peer(conn)
        try:
            body, fds, flags, _ = await asyncio.to_thread(socket.recv_fds, conn, MAX_MESSAGE, 3)
        except TimeoutError:
            return {"error": f"no claim within {WAIT:g} s"}
        try:
            why = message_refusal(body, fds, bool(flags & socket.MSG_CTRUNC))
            if why is not None:
                raise ClaimError(why)
            dev, ino = _netns_ino(fds[0], peer)
            why = folder_refusal(os.fstat(fds[1]), peer)
            if why is not None:
                raise ClaimError(why)
            sock = await self.pods.claim(dev, ino, fds[1], SOCKET_FILE)
            fds.pop()  # the pod's socket keeps the folder open
        except ClaimError as exc:
            log.warning("claim refused", pid=peer.pid, uid=peer.uid, error=str(exc))
            return {"error": str(exc)}
        except NsmError as exc:
            log.warning("claim refused", pid=peer.pid, uid=peer.uid, error=exc.message)
            return {"error": exc.message}
        finally:
            for fd in fds:
                os.close(fd)
        return {"socket": SOCKET_FILE, "inode": sock.ino}
