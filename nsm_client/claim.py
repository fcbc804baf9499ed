"""A pod's side of the agent's claim socket: ask for the pod's own socket in a folder of the
pod's, by passing the pod's network namespace and that folder (see nsm_agent/pods/claims.py),
and ask again whenever the socket stops answering (the agent restarted out of sight of it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable

RECHECK = 1.0  # seconds between looks at whether the pod's socket answers


class ClaimError(Exception):
    pass


def claim(claim_socket: str, folder: str, timeout: float = 10.0) -> dict[str, object]:
    """Ask the agent at CLAIM_SOCKET for this namespace's socket in FOLDER; the agent's answer
    ({"socket": FILE, "inode": N}). Raises ClaimError with the agent's reason."""
    try:
        netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ClaimError(f"cannot open this process's network namespace: {exc}") from exc
    try:
        try:
            where = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ClaimError(f"cannot open the folder {folder}: {exc.strerror}") from exc
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(timeout)
                conn.connect(claim_socket)
                socket.send_fds(conn, [b"{}"], [netns, where])
                answer = _read_line(conn)
        except OSError as exc:
            raise ClaimError(f"the agent's claim socket {claim_socket}: {exc.strerror or exc}") from exc
        finally:
            os.close(where)
    finally:
        os.close(netns)
    try:
        reply = json.loads(answer)
    except ValueError as exc:
        raise ClaimError(f"the agent answered {answer[:200]!r}") from exc
    if not isinstance(reply, dict) or "error" in reply or "socket" not in reply:
        raise ClaimError(f"the agent refused the claim: {reply.get('error') if isinstance(reply, dict) else reply}")
    return reply


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def answers(path: str) -> bool:
    """Whether something listens on the unix socket PATH."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def ensure(claim_socket: str, path: str) -> bool:
    """Claim the socket at PATH (its folder the pod's) unless it answers already; True if claimed."""
    if answers(path):
        return False
    claim(claim_socket, os.path.dirname(path) or ".")
    return True


async def keep_claimed(claim_socket: str, path: str, stop: asyncio.Event,
                       on_event: Callable[[dict[str, object]], None]) -> None:  # fmt: skip
    """Until STOP: claim the socket at PATH again whenever it does not answer. A refused or
    failed claim is retried at the next look (the agent may be starting)."""
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), RECHECK)
        if stop.is_set():
            return
        try:
            claimed = await asyncio.to_thread(ensure, claim_socket, path)
        except ClaimError as exc:
            on_event({"event": "claim failed", "error": str(exc)})
            continue
        if claimed:
            on_event({"event": "claimed again", "socket": path})
