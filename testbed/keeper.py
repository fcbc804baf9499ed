"""A client pod's keeper (`nsmctl connect --watch`) and the JSON events it prints."""

from __future__ import annotations

import json
import time

from testbed.bed import BIN, Proc, Testbed, patience


def keep(bed: Testbed, agent: str, pod: str, service: str, ifname: str = "nsm-1") -> Proc:
    """Start a keeper asking `agent` for `service` as IFNAME in `pod`."""
    return bed.start(
        f"keeper-{pod}-{ifname}",
        [str(BIN / "nsmctl"), "connect", "--watch", "--agent", agent,
         "--netns", pod, "--service", service, "--ifname", ifname],
    )  # fmt: skip


def events(proc: Proc) -> list[dict[str, object]]:
    return [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]


def wait_event(proc: Proc, word: str, after: int = 0, timeout: float = 15) -> dict[str, object]:
    """The first event from number `after` on whose name holds `word`."""
    deadline = time.monotonic() + patience(timeout)
    while time.monotonic() < deadline:
        for e in events(proc)[after:]:
            if word in str(e["event"]):
                return e
        time.sleep(0.01)
    raise AssertionError(f"no {word!r} event:\n{proc.output()}")


def peer(e: dict[str, object]) -> str:
    """The endpoint's address in a connected/healed event."""
    return str(e["endpoint_ips"][0]).split("/")[0]  # type: ignore[index]
