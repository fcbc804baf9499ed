"""The pods' sockets: opened on request through the node-wide socket (`nsmctl pod-socket`),
kept across restarts (`pod-sockets.json` in the state folder), removed with their pod.

The request is `/nsmpy.PodSockets/Open` with a JSON body {"netns": PATH or inode://DEV/INO,
"name": NAME}: not part of upstream's API, and served on the node-wide socket only (root's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
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
    path: str  # the socket file
    netns: str  # a path that opened the pod's namespace
    dev: int
    ino: int

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
        self._pruning: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """The sockets of the pods still there, as they were before a restart."""
        for sock in self._saved():
            if self.resolver.find(sock.ref) is not None:
                try:
                    await self._serve(sock)
                except NsmError as exc:  # the agent serves on; that pod asks again
                    log.error("pod socket not opened again", socket=sock.path, error=exc.message)
            else:  # its pod went while the agent was down: its file goes too
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(sock.path)
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
        for sock, _ in self._open.values():
            if sock.ino == ref.ino:
                return sock
        if name in self._open:
            raise invalid(f"socket name {name!r} is another pod's")
        sock = PodSocket(name, str(self.folder / f"{name}.sock"), ref.path, ref.dev, ref.ino)
        await self._serve(sock)
        self._save()
        log.info("pod socket opened", socket=sock.path, netns=ref.path, inode=ref.ino)
        return sock

    async def _serve(self, sock: PodSocket) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o755)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock.path)
        server = aio_server()
        networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(
            PodNetworkService(sock.name, sock.ref, self.node, self.events, self.resolver), server
        )
        connection_pb2_grpc.add_MonitorConnectionServicer_to_server(PodMonitorService(sock.ref, self.events), server)
        try:
            if server.add_insecure_port(f"unix:{sock.path}") == 0:
                raise invalid(f"cannot listen on {sock.path}")
            await server.start()
            os.chmod(sock.path, 0o666)  # mounted into that pod only: any user of it may call
        except BaseException as exc:
            await server.stop(None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sock.path)
            if isinstance(exc, RuntimeError | OSError):  # grpcio's "failed to bind", a folder it cannot use
                raise invalid(f"cannot listen on {sock.path}: {exc}") from exc
            raise
        self._open[sock.name] = (sock, server)

    async def _close(self, name: str) -> None:
        sock, server = self._open.pop(name)
        await server.stop(grace=1.0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock.path)

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_EVERY)
            await self.prune()

    async def prune(self) -> None:
        """Remove the sockets of pods whose namespace is gone."""
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
