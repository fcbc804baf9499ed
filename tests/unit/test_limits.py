"""The per-peer call limit and the message size limit, over real gRPC in process (no root)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path

import grpc

from nsm_common.limits import MAX_MESSAGE_BYTES, PeerLimit
from tests.helpers.served import served


def test_a_peer_past_its_limit_is_refused_at_once_and_served_again_after(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(PeerLimit.__init__, "__defaults__", (2,))  # the servers' limit, for this test
    release = threading.Event()
    entered = threading.Semaphore(0)

    async def slow(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        entered.release()
        while not release.is_set():
            await asyncio.sleep(0.01)
        return request

    handler = grpc.method_handlers_generic_handler("t.T", {"Slow": grpc.unary_unary_rpc_method_handler(slow)})
    target = f"unix:{tmp_path}/t.sock"
    with served(lambda server: server.add_generic_rpc_handlers((handler,)), target):
        channel = grpc.insecure_channel(target)
        call = channel.unary_unary("/t.T/Slow", None, None)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            held = [pool.submit(call, b"x", timeout=10) for _ in range(2)]
            for _ in range(2):  # both in progress
                assert entered.acquire(timeout=10)
            try:
                call(b"y", timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
                assert "too many calls at once from unix (at most 2)" in str(exc.details())  # type: ignore[attr-defined]
            else:
                raise AssertionError("a third call at once was taken")
            release.set()
            assert [f.result() for f in held] == [b"x", b"x"]
        assert call(b"z", timeout=10) == b"z"  # the count went back down
        try:
            call(b"x" * (MAX_MESSAGE_BYTES + 1), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        else:
            raise AssertionError("a message past the limit was taken")
        channel.close()
