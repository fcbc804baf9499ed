"""Where a component's identity comes from: a folder (`folder.py`) or the SPIFFE Workload
API (`workload_api.py`); both answer `current()`."""

from __future__ import annotations

from typing import Protocol

from nsm_common.identity.svid import Svid


class IdentitySource(Protocol):
    def current(self) -> Svid:
        """The identity to use now (a renewal or rotation taken once it is valid)."""
        ...
