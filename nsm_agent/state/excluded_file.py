"""The node's excluded-prefixes file (`--excluded-prefixes FILE`), followed while the agent runs.

In Kubernetes it is upstream's ConfigMap `excluded-prefixes-config` mounted as a folder: the
kubelet swaps a `..data` symlink when the ConfigMap changes, so the file is read again (by
content) every second rather than watched by inode. A file that is not there yet holds no
prefixes (the ConfigMap is optional). A bad file at start stops the agent; a bad change is
logged, naming its line, and the last good list stays.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import structlog

from nsm_agent.decisions.excluded_prefixes import ExcludedPrefixesError, IPNetwork, parse_excluded_prefixes

log = structlog.get_logger("nsm.agent")
RECHECK = 1.0  # seconds between looks at the file


class ExcludedPrefixesFile:
    """The prefixes of one file (none when PATH is empty), kept current by `follow`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.prefixes: tuple[IPNetwork, ...] = ()
        self._text: str | None = None
        self.load()  # raises at start: there is no last good list to keep

    def _read(self) -> str | None:
        try:
            return Path(self.path).read_text()
        except FileNotFoundError:
            return None

    def load(self) -> bool:
        """Reads the file; True when its prefixes changed. ExcludedPrefixesError when it is bad."""
        if not self.path:
            return False
        text = self._read()
        if text == self._text:
            return False
        prefixes = parse_excluded_prefixes(text or "", self.path)
        self._text = text
        changed = prefixes != self.prefixes
        self.prefixes = prefixes
        return changed

    async def follow(self, on_change: Callable[[tuple[IPNetwork, ...]], None]) -> None:
        """Look every second until cancelled; ON_CHANGE hears each new list."""
        failed = ""
        while True:
            await asyncio.sleep(RECHECK)
            try:
                changed = self.load()
            except (ExcludedPrefixesError, OSError) as exc:
                if str(exc) != failed:  # once per bad version, not every second
                    log.error("excluded prefixes not taken; the last good list stays", error=str(exc),
                              kept=[str(p) for p in self.prefixes])  # fmt: skip
                failed = str(exc)
                continue
            failed = ""
            if changed:
                log.info("excluded prefixes changed", file=self.path, prefixes=[str(p) for p in self.prefixes])
                on_change(self.prefixes)
