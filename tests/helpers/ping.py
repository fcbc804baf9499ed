"""Pings that run in the background while something restarts, and what they lost."""

from __future__ import annotations

import re

from testbed.bed import Proc, Testbed


def start_ping(bed: Testbed, pod: str, address: str, seconds: float) -> Proc:
    count = int(seconds / 0.01)
    return bed.start(f"ping-{pod}-{address}", ["ping", "-i", "0.01", "-c", str(count), "-W", "1", address], netns=pod)


def lost(proc: Proc) -> tuple[int, int]:
    proc.popen.wait(60)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", proc.output())
    assert m, proc.output()
    return int(m.group(1)), int(m.group(2))
