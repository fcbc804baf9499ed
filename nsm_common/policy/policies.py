"""The policies a component checks: the defaults written here (upstream's rules) and a
site's own files, reloaded when they change.

Defaults by where they are checked: `server` (a NetworkService server: the path so far),
`client` (a reply from the hop we called), `registry` (registrations). Site files
(`--policy PATH`, files or folders of `*.rego`) are checked on a server's Requests and
Closes and on registrations; `input.operation` says which call it is. Every policy's
`valid` must be true; the first that is not names itself in the denial.

A site file that does not compile is refused with the engine's error: at start the
component does not start; on a reload the policies in force stay.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import structlog
from regopy import Interpreter

from nsm_common.policy.engine import (
    EngineError,
    Policy,
    PolicyError,
    PolicyGroup,
    compile_group,
    compile_policy,
    give_input,
)
from nsm_common.tokens import claims

log = structlog.get_logger("nsm.policy")

DEFAULTS: dict[str, tuple[str, ...]] = {
    # A caller on a plaintext unix socket: its segment is this hop's own signature, and the
    # socket confines it; only the site's policies have anything to say.
    "local": (),
    "server": ("common/tokens_valid", "common/tokens_chained", "common/tokens_expired",
               "server/prev_token_signed", "server/prev_token_is_callers"),
    # A refresh or Close of a connection this hop holds, under its lock (Begin).
    "owner": ("server/caller_owns_connection",),
    "client": ("common/tokens_valid", "common/tokens_chained", "common/tokens_expired",
               "client/next_token_from_server"),
    "registry": ("common/tokens_valid", "common/tokens_chained", "common/tokens_expired",
                 "server/prev_token_signed", "server/prev_token_is_callers", "registry/registrant_owns_name"),
}  # fmt: skip
# Without identities there are no tokens: only what does not ask for them is checked.
EXPIRED = "common/tokens_expired"
WITHOUT_TOKENS: dict[str, tuple[str, ...]] = {
    "local": (),
    "server": (),
    "owner": ("server/caller_owns_connection",),
    "client": (),
    "registry": ("registry/registrant_owns_name",),
}
SITE_POINTS = ("local", "server", "registry")
# Modules the defaults import (not policies of their own).
HELPERS = ("common/payloads",)
RECHECK = 1.0  # seconds between looks at the site files
CACHE_SIZE = 1024  # a few KiB each (the input holds a certificate)
CACHE_TTL = 10.0  # a decision is reused this long at most (policies may read the time)


@dataclass(frozen=True)
class Denial:
    """Which policy said no, and the message a caller gets."""

    policy: str
    rule: str
    message: str


def default_source(name: str) -> str:
    """One of the policies written here, by its name under nsm_common/policy/rego."""
    return resources.files("nsm_common.policy").joinpath(f"rego/{name}.rego").read_text()


def default_policy(name: str) -> Policy:
    return compile_policy(f"{name}.rego", default_source(name))


def default_group(names: Sequence[str]) -> PolicyGroup | None:
    """The defaults of one point, in one bundle (one query for all of them)."""
    if not names:
        return None
    helpers = [(f"{n}.rego", default_source(n)) for n in HELPERS]
    return compile_group([(f"{n}.rego", default_source(n)) for n in names], helpers)


def site_files(paths: Sequence[Path]) -> list[Path]:
    """The .rego files PATHS name (a folder: the files in it, sorted); raises PolicyError
    for a path that is neither."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.glob("*.rego") if p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise PolicyError(f"--policy {path}: no such file or folder")
    return found


def load_site(paths: Sequence[Path]) -> list[Policy]:
    """Compile every site file; raises PolicyError naming the file that fails."""
    out = []
    for file in site_files(paths):
        try:
            source = file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"policy {file} cannot be read: {exc}") from None
        out.append(compile_policy(str(file), source))
    return out


def _signature(paths: Sequence[Path]) -> tuple[object, ...]:
    """Changes when any site file (or a folder's list of them) does."""
    sig: list[object] = []
    for path in paths:
        try:
            entries = site_files([path])
        except PolicyError:
            sig.append((str(path), None))
            continue
        for file in entries:
            try:
                st = file.stat()
            except OSError:
                sig.append((str(file), None))
                continue
            sig.append((str(file), st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(sig)


def _earliest_exp(document: dict[str, Any]) -> float | None:
    found = [c.get("exp") for s in document.get("path_segments", []) if (c := claims(s.get("token", "")))]
    numbers = [float(e) for e in found if isinstance(e, int | float)]
    return min(numbers) if numbers else None


class Policies:
    """The policies of one component; `check` answers a Denial or None."""

    def __init__(self, site: Sequence[Path] = (), *, tokens: bool = True) -> None:
        """Raises PolicyError for a site file that does not compile (the component does not start)."""
        names = DEFAULTS if tokens else WITHOUT_TOKENS
        self._names = names
        self._defaults = {point: default_group(chosen) for point, chosen in names.items()}
        self._paths = list(site)
        self._site = load_site(self._paths)
        self._seen = _signature(self._paths)
        self._looked = time.monotonic()
        self._lock = threading.Lock()
        self.generation = 0
        self._cache: OrderedDict[tuple[int, str, bytes], tuple[Denial | None, float]] = OrderedDict()
        self._runner = Interpreter()  # one input, every policy's bundle run on it

    @property
    def site(self) -> list[str]:
        return [p.name for p in self._site]

    def reload(self) -> bool:
        """Look at the site files now; True when new policies were taken. A file that does not
        compile is logged and the policies in force stay."""
        with self._lock:
            self._looked = time.monotonic()
            sig = _signature(self._paths)
            if sig == self._seen:
                return False
            self._seen = sig  # a broken file is reported once, not every second
            try:
                fresh = load_site(self._paths)
            except PolicyError as exc:
                log.error("policy refused; the policies in force stay", error=str(exc))
                return False
            self._site = fresh
            self.generation += 1
            self._cache.clear()
            log.info("policies reloaded", files=[p.name for p in fresh])
            return True

    async def follow(self) -> None:
        """Look at the site files every second until cancelled: a change is taken, and a broken
        file reported, when it is made rather than at the next call."""
        while True:
            await asyncio.sleep(RECHECK)
            if self._paths:
                # On the loop, not a thread: the engine is not known to be safe with a compile
                # beside an evaluation, and a look costs a few stat calls (a compile, when a
                # file changed, a few milliseconds).
                self.reload()

    def asks(self, point: str) -> bool:
        """Whether any policy is checked at POINT (else a caller need not build its input)."""
        return self._defaults.get(point) is not None or (point in SITE_POINTS and bool(self._site))

    def check(self, point: str, document: dict[str, Any]) -> Denial | None:
        """The first policy at POINT (and, on a server or the registry, the site's) whose `valid`
        is not true for DOCUMENT; an engine failure denies (fail closed)."""
        if not self.asks(point):
            return None
        text = json.dumps(document, sort_keys=True, default=str)
        # Keyed by a digest: the input may be large (a message holds up to 4 MiB).
        key = (self.generation, point, hashlib.sha256(text.encode()).digest())
        at = time.time()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > at:
            return cached[0]
        denial = self._evaluate(point, text)
        exp = _earliest_exp(document)
        if denial is None and exp is not None and exp <= at and EXPIRED in (self._names.get(point) or ()):
            # The one default rule that reads the clock, decided here too from the same claims:
            # the engine's time.now_ns() was once seen to let a token 5 s past its exp through.
            denial = Denial(
                f"{EXPIRED}.rego", "data.nsm.valid", f"policy {EXPIRED}.rego denies this: data.nsm.valid is not true"
            )
        until = min(at + CACHE_TTL, exp if exp is not None else at + CACHE_TTL)
        self._cache[key] = (denial, until)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return denial

    def _evaluate(self, point: str, document: str) -> Denial | None:
        runner = self._runner
        group = self._defaults.get(point)
        if group is None and not (point in SITE_POINTS and self._site):
            return None  # nothing to ask: no engine call at all
        try:
            give_input(runner, document)  # once, for every policy
            denied = group.denied_on(runner) if group is not None else None
        except EngineError as exc:
            log.error("policy engine failed; denied", error=str(exc))
            return Denial("defaults", "data.nsm.valid", f"{exc}; denied")
        if denied is not None:
            return Denial(denied, "data.nsm.valid", f"policy {denied} denies this: data.nsm.valid is not true")
        chosen = list(self._site) if point in SITE_POINTS else []
        for policy in chosen:
            try:
                allowed = policy.allows_on(runner)
            except EngineError as exc:
                log.error("policy engine failed; denied", policy=policy.name, error=str(exc))
                return Denial(policy.name, policy.rule, f"{exc}; denied")
            if not allowed:
                return Denial(policy.name, policy.rule, f"policy {policy.name} denies this: {policy.rule} is not true")
        return None
