"""The pods' sockets: opened on request through the node-wide socket (`nsmctl pod-socket`),
or claimed by the pod itself into a folder of its own (`claims`); kept across restarts
(`pod-sockets.json` in the state folder), removed with their pod.

The request is `/nsmpy.PodSockets/Open` with a JSON body {"netns": PATH or inode://DEV/INO,
"name": NAME}: not part of upstream's API, and served on the node-wide socket only (root's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import structlog

from nsm_agent.netns.resolve import NetnsRef, NetnsResolver
from nsm_agent.netns.spec import NetnsSpec, parse_netns
from nsm_agent.pods.service import PodMonitorService, PodNetworkService
from nsm_api import connection_pb2_grpc, networkservice_pb2_grpc
from nsm_common.chain.monitor import ConnectionEvents
from nsm_common.chain.server import NetworkServiceServer
from nsm_common.errors import NsmError, invalid
from nsm_common.grpcutil import Ctx, aio_server

log = structlog.get_logger("nsm.agent")

SERVICE = "nsmpy.PodSockets"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
PRUNE_EVERY = 2.0  # seconds between looks for pods that are gone


@dataclass(frozen=True)
class PodSocket:
    name: str
    path: str  # the socket file (a claimed one's: as the agent saw its folder, maybe not reachable)
    netns: str  # a path that opened the pod's namespace
    dev: int
    ino: int
    # A claimed socket's folder, the pod's own (0, 0: the node's folder of pod sockets).
    folder_dev: int = 0
    folder_ino: int = 0

    @property
    def claimed(self) -> bool:
        return self.folder_ino != 0

    @property
    def ref(self) -> NetnsRef:
        return NetnsRef(self.netns, self.dev, self.ino)


def spec_of(text: str) -> NetnsSpec:
    """A namespace as `nsmctl` names it: a path, or inode://DEV/INO (raises NsmError)."""
    if text.startswith("inode://"):
        return parse_netns({"inodeURL": text})
    return parse_netns({"inodeURL": f"file://{text}"})


class PodSockets:
    """Each pod's own gRPC server on its own socket, over the node's chain."""

    def __init__(self, folder: Path, state_dir: Path, node: NetworkServiceServer, events: ConnectionEvents,
                 resolver: NetnsResolver) -> None:  # fmt: skip
        self.folder = folder
        self.file = state_dir / "pod-sockets.json"
        self.node = node
        self.events = events
        self.resolver = resolver
        self._open: dict[str, tuple[PodSocket, grpc.aio.Server]] = {}
        self._folders: dict[str, int] = {}  # name -> the open folder of a claimed socket
        self._pruning: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one change at a time: Open, claims and pruning

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """The sockets of the pods still there, as they were before a restart."""
        for sock in self._saved():
            if self.resolver.find(sock.ref) is None:  # its pod went while the agent was down
                if not sock.claimed:  # (a pod's own folder went with it)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(sock.path)
                continue
            folder = _reopen_folder(sock) if sock.claimed else None
            if sock.claimed and folder is None:  # out of the agent's sight: the pod claims again
                log.info("pod socket left to its pod to claim again", socket=sock.path)
                continue
            try:
                await self._serve(sock, folder)
            except NsmError as exc:  # the agent serves on; that pod asks again
                log.error("pod socket not opened again", socket=sock.path, error=exc.message)
                if folder is not None:
                    os.close(folder)
        self._save()
        self._pruning = asyncio.create_task(self._prune_loop())
        log.info("pod sockets serving", sockets=len(self._open), folder=str(self.folder))

    async def stop(self) -> None:
        """Stop serving (the list stays: the next start opens them again)."""
        if self._pruning is not None:
            self._pruning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruning
        for name in list(self._open):
            await self._close(name)

    # ------------------------------------------------------------------ requests
    async def open(self, netns: str, name: str) -> PodSocket:
        """The socket of the pod whose namespace NETNS is (made if there is none); raises NsmError."""
        ref = self.resolver.resolve(spec_of(netns))
        name = name or f"ino-{ref.ino}"
        if not _NAME.fullmatch(name):
            raise invalid(f"socket name {name!r}: letters, digits, '.', '_' and '-', at most 63")
        async with self._lock:
            for sock, _ in self._open.values():
                if sock.ino == ref.ino:
                    return sock
            if name in self._open:
                raise invalid(f"socket name {name!r} is another pod's")
            sock = PodSocket(name, str(self.folder / f"{name}.sock"), ref.path, ref.dev, ref.ino)
            await self._serve(sock, None)
            self._save()
        log.info("pod socket opened", socket=sock.path, netns=ref.path, inode=ref.ino)
        return sock

    async def claim(self, dev: int, ino: int, folder: int, file: str) -> PodSocket:
        """The socket of the pod whose namespace is DEV/INO, as FILE in the open folder FOLDER
        (the pod's own; this takes the descriptor when it succeeds). A socket the namespace
        had is replaced: the pod claims again when it cannot reach it. Raises NsmError."""
        ref = self.resolver.resolve(spec_of(f"inode://{dev}/{ino}"))
        st = os.fstat(folder)
        seen = _folder_path(folder)
        sock = PodSocket(f"ino-{ref.ino}", os.path.join(seen, file), ref.path, ref.dev, ref.ino, st.st_dev, st.st_ino)
        async with self._lock:
            for name, (old, _) in list(self._open.items()):
                if old.ino == ref.ino or old.name == sock.name:
                    await self._close(name)
            await self._serve(sock, folder)
            self._save()
        log.info("pod socket claimed", socket=sock.path, netns=ref.path, inode=ref.ino)
        return sock

    def _bind_path(self, sock: PodSocket) -> str:
        """Where grpcio binds SOCK: a claimed one through its open folder, never its path."""
        if sock.claimed:
            return f"/proc/self/fd/{self._folders[sock.name]}/{os.path.basename(sock.path)}"
        return sock.path

    async def _serve(self, sock: PodSocket, folder: int | None) -> None:
        """Serve SOCK (FOLDER: a claimed one's open folder, taken when this succeeds)."""
        if folder is not None:
            self._folders[sock.name] = folder
        else:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o755)
        path = self._bind_path(sock)
        try:
            _make_way(path)
        except NsmError:
            self._folders.pop(sock.name, None)
            raise
        server = aio_server()
        networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(
            PodNetworkService(sock.name, sock.ref, self.node, self.events, self.resolver), server
        )
        connection_pb2_grpc.add_MonitorConnectionServicer_to_server(PodMonitorService(sock.ref, self.events), server)
        try:
            if server.add_insecure_port(f"unix:{path}") == 0:
                raise invalid(f"cannot listen on {sock.path}")
            await server.start()
            os.chmod(path, 0o666)  # mounted into that pod only: any user of it may call
        except BaseException as exc:
            await server.stop(None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self._folders.pop(sock.name, None)  # the caller still owns the descriptor
            if isinstance(exc, RuntimeError | OSError):  # grpcio's "failed to bind", a folder it cannot use
                raise invalid(f"cannot listen on {sock.path}: {exc}") from exc
            raise
        self._open[sock.name] = (sock, server)

    async def _close(self, name: str) -> None:
        sock, server = self._open.pop(name)
        await server.stop(grace=1.0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._bind_path(sock))
        folder = self._folders.pop(name, None)
        if folder is not None:
            os.close(folder)

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_EVERY)
            await self.prune()

    async def prune(self) -> None:
        """Remove the sockets of pods whose namespace is gone."""
        async with self._lock:
            gone = [name for name, (sock, _) in self._open.items() if self.resolver.find(sock.ref) is None]
            for name in gone:
                log.info("pod socket removed: its pod is gone", socket=self._open[name][0].path)
                await self._close(name)
            if gone:
                self._save()

    # ------------------------------------------------------------------ the list
    def _saved(self) -> list[PodSocket]:
        try:
            return [PodSocket(**item) for item in json.loads(self.file.read_text())]
        except FileNotFoundError:
            return []
        except (ValueError, TypeError) as exc:
            log.warning("pod socket list unreadable; starting without it", file=str(self.file), error=str(exc))
            return []

    def _save(self) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(sock) for sock, _ in self._open.values()]))
        os.replace(tmp, self.file)

    # ------------------------------------------------------------------ gRPC
    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        """`/nsmpy.PodSockets/Open` (JSON in and out), for the node-wide socket only."""

        async def open_call(body: bytes, context: Ctx) -> bytes:
            plaintext = context.auth_context().get("transport_security_type") != [b"ssl"]
            if not (plaintext and context.peer().startswith("unix:")):
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED, "pod sockets are opened on the node's socket only"
                )
            try:
                asked = json.loads(body or b"{}")
                if not isinstance(asked, dict):
                    raise ValueError("not an object")
                sock = await self.open(str(asked.get("netns", "")), str(asked.get("name", "")))
            except ValueError:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the body is not a JSON object")
            except NsmError as exc:
                await context.abort(exc.code, exc.message)
            return json.dumps({"socket": f"unix://{sock.path}", "netns": sock.netns, "inode": sock.ino}).encode()

        return grpc.method_handlers_generic_handler(SERVICE, {"Open": grpc.unary_unary_rpc_method_handler(open_call)})


def _make_way(path: str) -> None:
    """Remove a stale socket at PATH; anything else there is in the way (NsmError)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise invalid(f"cannot listen on {path}: a file that is not a socket is there")
    os.unlink(path)


def _folder_path(fd: int) -> str:
    """Where the open folder FD is, as the agent sees it (a pod's folder in a mount namespace
    of its own reads as a path inside that: kept for the logs and for a restart to try)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def _reopen_folder(sock: PodSocket) -> int | None:
    """The folder of claimed SOCK opened again after a restart, if the agent can see it at the
    path it read and it is still that folder (the same device and inode); else None."""
    try:
        fd = os.open(os.path.dirname(sock.path), os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (sock.folder_dev, sock.folder_ino):
        os.close(fd)
        return None
    return fd
