"""Whether the node rebooted since this agent last ran: the kernel's boot id, kept in the state folder.

After a reboot nothing the journal holds can still be there: every namespace,
interface and endpoint process went with the old kernel. Knowing it, the agent
undoes the journal at once instead of looking for wires, and unregisters the
endpoints that registered through it before (the registry would keep them
until they expire, and send clients to sockets nobody listens on).
"""

from __future__ import annotations

import os
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
FILE = "boot_id"


def rebooted_since_last_run(state_dir: Path, current: Path = BOOT_ID) -> bool:
    """True when the state folder says an earlier boot. A state folder that has never seen a
    boot id (first start, or an older agent) says no. Nothing is written: `record_boot`, once
    the journal of before is undone (a crash before that undoes it again at the next start)."""
    try:
        before = (state_dir / FILE).read_text().strip()
    except FileNotFoundError:
        return False
    return before != current.read_text().strip()


def record_boot(state_dir: Path, current: Path = BOOT_ID) -> None:
    """Write down this boot's id (whole or not at all)."""
    path = state_dir / FILE
    now = current.read_text().strip()
    try:
        if path.read_text().strip() == now:
            return
    except FileNotFoundError:
        pass
    tmp = path.with_suffix(".tmp")
    tmp.write_text(now + "\n")
    os.replace(tmp, path)
