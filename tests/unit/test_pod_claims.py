"""The claim socket in-process: what a claim must pass (pure checks) and the server's answers
to the real client, over a real unix socket, with the pods' sockets stood in for."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import pytest

from nsm_agent.pods.claims import ClaimServer, Peer, folder_refusal, message_refusal
from nsm_agent.pods.sockets import PodSocket, PodSockets
from nsm_client.claim import ClaimError, claim


def fake_stat(mode: int, uid: int = 0, gid: int = 0) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, gid, 0, 0, 0, 0))


def test_a_folder_must_be_one_the_caller_could_write() -> None:
    pod = Peer(pid=10, uid=1000, gid=1000)
    assert folder_refusal(fake_stat(stat.S_IFDIR | 0o777), pod) is None  # an emptyDir
    assert folder_refusal(fake_stat(stat.S_IFDIR | 0o755, uid=1000), pod) is None
    assert folder_refusal(fake_stat(stat.S_IFDIR | 0o775, gid=1000), pod) is None
    assert folder_refusal(fake_stat(stat.S_IFDIR | 0o755), pod) == "the folder passed is not writable by uid 1000"
    assert folder_refusal(fake_stat(stat.S_IFDIR | 0o555, uid=1000), pod) is not None
    assert folder_refusal(fake_stat(stat.S_IFDIR | 0o700), Peer(1, 0, 0)) is None  # root's own
    assert folder_refusal(fake_stat(stat.S_IFREG | 0o777), pod) == "the second descriptor is not a folder"


def test_a_claim_message_is_two_descriptors_and_an_empty_object() -> None:
    assert message_refusal(b"{}", [3, 4], False) is None
    assert message_refusal(b"", [3, 4], False) is None
    assert "1 descriptors passed" in str(message_refusal(b"{}", [3], False))
    assert "too many descriptors" in str(message_refusal(b"{}", [3, 4, 5], True))
    assert message_refusal(b"{nope", [3, 4], False) == "the claim is not JSON"
    assert "empty JSON object" in str(message_refusal(b'{"netns": "/proc/1/ns/net"}', [3, 4], False))
    assert "empty JSON object" in str(message_refusal(b"[]", [3, 4], False))


class StandIn(PodSockets):
    """The pods' sockets, standing in: records each claim and keeps nothing."""

    def __init__(self) -> None:
        self.claims: list[tuple[int, int, os.stat_result]] = []

    async def claim(self, dev: int, ino: int, folder: int, file: str) -> PodSocket:
        self.claims.append((dev, ino, os.fstat(folder)))
        os.close(folder)  # taken, as the real one takes it
        return PodSocket(f"ino-{ino}", file, "/proc/1/ns/net", dev, ino, 1, 1)


def test_the_server_answers_the_real_client(tmp_path: Path) -> None:
    pods = StandIn()
    path = str(tmp_path / "claim" / "claim.sock")
    folder = tmp_path / "pod"
    folder.mkdir()

    async def scenario() -> None:
        server = ClaimServer(path, pods)
        server.bind()
        server.start()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
        try:
            answer = await asyncio.to_thread(claim, path, str(folder))
            assert answer["socket"] == "nsm.io.sock"
            with pytest.raises(ClaimError, match="cannot open the folder"):
                await asyncio.to_thread(claim, path, str(tmp_path / "none"))

            # One message without descriptors: refused, and the server serves on.
            def bare() -> bytes:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                    conn.connect(path)
                    conn.sendall(b"{}")
                    return conn.recv(4096)

            assert b"0 descriptors passed" in await asyncio.to_thread(bare)
            assert (await asyncio.to_thread(claim, path, str(folder)))["socket"] == "nsm.io.sock"
        finally:
            await server.stop()
        assert not os.path.exists(path)

    asyncio.run(scenario())
    own = os.stat("/proc/self/ns/net")
    assert [(dev, ino) for dev, ino, _ in pods.claims] == [(own.st_dev, own.st_ino)] * 2
    assert all(st.st_ino == folder.stat().st_ino for _, _, st in pods.claims)
