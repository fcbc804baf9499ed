"""A caller of the agent's claim socket that sends what it is told, hostile or not, and
prints the agent's answer: `python -m tests.helpers.claimant SOCKET [--netns PATH]
[--folder PATH] [--extra PATH ...] [--body TEXT]` (descriptors in that order)."""

from __future__ import annotations

import argparse
import os
import socket


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("socket")
    p.add_argument("--netns", help="a file to pass as the namespace (default: this process's)")
    p.add_argument("--folder", help="a file to pass as the folder")
    p.add_argument("--extra", action="append", default=[], help="more files to pass")
    p.add_argument("--body", default="{}")
    p.add_argument("--uid", type=int, help="drop to this uid first")
    args = p.parse_args()
    paths = [args.netns or "/proc/self/ns/net", *([args.folder] if args.folder else []), *args.extra]
    fds = [os.open(path, os.O_RDONLY if not os.path.isdir(path) else os.O_PATH | os.O_DIRECTORY) for path in paths]
    if args.uid is not None:
        os.setgid(args.uid)
        os.setuid(args.uid)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(args.socket)
        socket.send_fds(conn, [args.body.encode()], fds)
        print(conn.recv(4096).decode().strip(), flush=True)


if __name__ == "__main__":
    main()
