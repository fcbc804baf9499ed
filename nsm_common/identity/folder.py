"""An identity folder followed as it changes: cert-manager renewing a Secret, an
operator rotating the CA. The new identity is taken when it is whole and valid; a
broken one is reported and the old kept."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import structlog

from nsm_common.identity.issue import TLS_CA, TLS_CERT, TLS_KEY
from nsm_common.identity.svid import IdentityError, Svid, load

log = structlog.get_logger()


def _signature(folder: Path) -> tuple[tuple[int, int, int], ...]:
    """What changes when any of the three files does, through symlinks: a Kubernetes
    Secret volume swaps its `..data` link, so the targets' inodes change."""
    out = []
    for name in (TLS_CERT, TLS_KEY, TLS_CA):
        try:
            st = os.stat(folder / name)
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)


class IdentityFolder:
    """The identity in a folder, loaded at once (a bad one raises IdentityError, for the
    program to refuse to start) and looked at again at most every INTERVAL seconds."""

    def __init__(self, folder: Path, *, server: bool, interval: float = 1.0) -> None:
        self.folder = folder
        self.server = server
        self.interval = interval
        self._lock = threading.Lock()
        self._signature = _signature(folder)
        self._svid = load(folder, server=server)
        self._checked = time.monotonic()

    def current(self) -> Svid:
        """The identity to use now: reloaded first if the files changed since last looked at."""
        self.refresh()
        return self._svid

    def refresh(self) -> bool:
        """Reload if due and changed; True when a new identity was taken. Safe from any
        thread (gRPC calls the server's certificate fetcher from its own)."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked < self.interval:
                return False
            self._checked = now
            signature = _signature(self.folder)
            if signature == self._signature:
                return False
            try:
                svid = load(self.folder, server=self.server)
            except IdentityError as exc:
                # Mid-write, or a bad renewal: keep serving with what we have.
                log.error("identity not reloaded, keeping the one in use", folder=str(self.folder), error=str(exc))
                return False
            self._signature = signature
            if svid.fingerprint == self._svid.fingerprint:
                return False
            log.info("identity reloaded", folder=str(self.folder), id=str(svid.spiffe_id),
                     not_after=svid.not_after.isoformat())  # fmt: skip
            self._svid = svid
            return True
