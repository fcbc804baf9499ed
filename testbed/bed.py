"""Namespaces, daemons and clean-up for a mesh on this machine."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from nsm_common.identity import issue
from nsm_common.identity.transport import Transport

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Every bed has a CA of its own for this trust domain: its components speak mutual TLS over
# TCP unless a test passes --insecure.
TRUST_DOMAIN = "nsm.test"
TESTER = f"spiffe://{TRUST_DOMAIN}/ns/test/sa/nsmctl"  # what the tests and nsmctl call as


def _timeout_scale() -> float:
    # A VM under qemu's software emulation starts an agent in tens of seconds where this
    # machine takes one or two: the run there says how much slower it is, and every wait
    # for a daemon stretches by that much instead of each test guessing its own.
    raw = os.environ.get("NSM_TESTBED_TIMEOUT_SCALE", "1")
    try:
        scale = float(raw)
    except ValueError:
        raise SystemExit(f"NSM_TESTBED_TIMEOUT_SCALE must be a number, not {raw!r}") from None
    if not 1 <= scale <= 100:
        raise SystemExit(f"NSM_TESTBED_TIMEOUT_SCALE must be between 1 and 100, not {raw!r}")
    return scale


TIMEOUT_SCALE = _timeout_scale()


def patience(seconds: float) -> float:
    """How long to wait for something that takes `seconds` here, on this (maybe slower) machine."""
    return seconds * TIMEOUT_SCALE


def run(*argv: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, input=input_text)


def links(netns: str) -> list[str]:
    """Interface names in a namespace."""
    out = run("ip", "-n", netns, "-o", "link", "show").stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()]


def addresses(netns: str) -> list[str]:
    out = run("ip", "-n", netns, "-o", "addr", "show").stdout
    return [line.split()[3] for line in out.splitlines() if " inet" in line]


def ping(netns: str, address: str, count: int = 1, timeout: float = 2) -> bool:
    res = run(
        "ip", "netns", "exec", netns, "ping", "-c", str(count), "-i", "0.2", "-W", str(timeout), address, check=False
    )
    return res.returncode == 0


def ping_df(netns: str, address: str, size: int) -> tuple[bool, str]:
    """One ping of `size` payload bytes with Don't Fragment set; (answered, output)."""
    res = run(
        "ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(size), address, check=False
    )
    return res.returncode == 0, res.stdout + res.stderr


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port free now and outside the kernel's ephemeral range.

    A port the kernel picked (bind to 0) comes from the ephemeral range, so before the
    test's server binds it an outgoing connection may take it as its source port (seen
    in CI: an etcd member's peer dialled from the port the next member was to listen
    on). Below that range only an explicit bind can take a port.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(10000, low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in 10000-{low}")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


@dataclass
class Testbed:
    __test__ = False  # not a pytest test class
    prefix: str = field(default_factory=lambda: "t" + uuid.uuid4().hex[:5])
    namespaces: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="nsm-bed-")))

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # Namespaces -------------------------------------------------------------------
    def netns(self, short: str) -> str:
        """Create `PREFIX-short` from this (the host's) mount namespace."""
        name = f"{self.prefix}-{short}"
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def resolv_conf(self, netns: str, nameserver: str) -> None:
        """Processes started in NETNS from now on ask NAMESERVER (`ip netns exec` mounts
        /etc/netns/NETNS/resolv.conf over /etc/resolv.conf); removed with the namespace."""
        folder = Path("/etc/netns") / netns
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "resolv.conf").write_text(f"nameserver {nameserver}\noptions timeout:1 attempts:2\n")

    # Identities -------------------------------------------------------------------
    def ca(self, trust_domain: str = TRUST_DOMAIN) -> Path:
        """The folder of the bed's CA for TRUST_DOMAIN (ca.crt, ca.key), made on first use."""
        ca = self.dir / "pki" / ("ca" if trust_domain == TRUST_DOMAIN else f"ca-{trust_domain}")
        if not (ca / "ca.crt").exists():
            issue.init_ca(ca, trust_domain)
        return ca

    def identity(self, spiffe_id: str) -> Path:
        """The folder of SPIFFE_ID's identity (tls.crt, tls.key, ca.crt), issued on first use by
        the bed's CA of its trust domain."""
        ca = self.ca(spiffe_id.removeprefix("spiffe://").split("/", 1)[0])
        out = self.dir / "pki" / spiffe_id.removeprefix("spiffe://").replace("/", "_")
        if not (out / "tls.crt").exists():
            issue.issue(ca, spiffe_id, out)
        return out

    def transport(self, spiffe_id: str = TESTER) -> Transport:
        """A transport with SPIFFE_ID's identity, for a test's own gRPC clients."""
        return Transport.load(self.identity(spiffe_id), insecure=False, server=False)

    def _identity_args(self, spiffe_id: str, extra: list[str] | None) -> list[str]:
        return [] if "--insecure" in (extra or []) else ["--identity", str(self.identity(spiffe_id))]

    # Processes --------------------------------------------------------------------
    def start(self, name: str, argv: list[str], netns: str | None = None, env: dict[str, str] | None = None) -> Proc:
        log = self.dir / f"{name}.log"
        restarts = 1
        while log.exists():  # a restart gets a log of its own, so waits see only its lines
            restarts += 1
            log = self.dir / f"{name}.{restarts}.log"
        cmd = (["ip", "netns", "exec", netns] if netns else []) + argv
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log, "ab") as out:
            popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def live(self, name: str) -> Proc:
        """The newest process of NAME still running (a restarted one has several)."""
        return [p for p in self.procs if p.name == name and p.alive()][-1]

    def restart(self, proc: Proc, ready: str) -> Proc:
        """PROC (already stopped) started again with the same command line, in the same
        namespace; returned once it logs READY."""
        args = [str(a) for a in proc.popen.args]  # type: ignore[union-attr]
        netns, argv = (args[3], args[4:]) if args[:3] == ["ip", "netns", "exec"] else (None, args)
        new = self.start(proc.name, argv, netns=netns)
        self.wait_for(new, ready)
        return new

    def wait_for(self, proc: Proc, text: str, timeout: float = 20) -> None:
        """Wait until the process logs `text`; fail with its log if it dies first."""
        timeout = patience(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in proc.output():
                return
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.output()}")
            time.sleep(0.05)
        raise TimeoutError(f"{proc.name} did not log {text!r} within {timeout}s:\n{proc.output()}")

    def registry(
        self,
        netns: str | None,
        port: int = 5002,
        extra: list[str] | None = None,
        name: str = "registry",
        trust_domain: str = TRUST_DOMAIN,
    ) -> tuple[Proc, str]:
        """A registry in `netns` on tcp://127.0.0.1:PORT there, and on a unix socket anyone here can reach.

        Returns the unix URL (for tests and agents alike).
        """
        sock = f"unix://{self.dir}/{name}.sock"
        listen = ["--listen", sock] + (["--listen", f"tcp://127.0.0.1:{port}"] if netns else [])
        ident = self._identity_args(f"spiffe://{trust_domain}/registry", extra)
        proc = self.start(name, [str(BIN / "nsm-registry"), *listen, *ident, *(extra or [])], netns=netns)
        self.wait_for(proc, "registry serving")
        return proc, sock

    def agent(
        self,
        netns: str,
        name: str,
        registry_url: str,
        extra: list[str] | None = None,
        wait: bool = True,
        trust_domain: str = TRUST_DOMAIN,
    ) -> tuple[Proc, str]:
        """An agent in `netns`; unless `wait` is False, returns once it serves."""
        sock = self.dir / f"{name}.sock"
        state = self.dir / f"{name}-state"
        proc = self.start(
            f"agent-{name}",
            [
                str(BIN / "nsm-agent"),
                "--name",
                name,
                "--registry",
                registry_url,
                "--listen",
                f"unix://{sock}",
                "--state-dir",
                str(state),
                "--pod-sockets",
                str(self.dir / f"{name}-pods"),
                *self._identity_args(f"spiffe://{trust_domain}/node/{name}", extra),
                *(extra or []),
            ],
            netns=netns,
        )
        if wait:
            self.wait_for(proc, "agent serving")
        return proc, f"unix://{sock}"

    def endpoint(
        self,
        netns: str,
        name: str,
        service: str,
        cidr: str,
        agent_url: str,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> tuple[Proc, str]:
        sock = self.dir / f"ep-{name}.sock"
        proc = self.start(
            f"endpoint-{name}",
            [
                str(BIN / "nsmctl"),
                "endpoint",
                "--agent",
                agent_url,
                "--netns",
                netns,
                "--name",
                name,
                "--service",
                service,
                "--cidr",
                cidr,
                "--listen",
                f"unix://{sock}",
                *(extra or []),
            ],
            env=env,
        )
        self.wait_for(proc, "endpoint registered")
        return proc, f"unix://{sock}"

    def nsmctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """nsmctl as the tests' own workload identity (over TCP it speaks mutual TLS)."""
        env = {**os.environ, "NSM_IDENTITY_DIR": str(self.identity(TESTER))}
        return subprocess.run([str(BIN / "nsmctl"), *args], check=check, capture_output=True, text=True, env=env)

    # Clean-up ---------------------------------------------------------------------
    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        # Whatever still runs inside (wireguard-go outlives its agent on purpose)
        # would keep a namespace alive after its name is gone. TERM first, so
        # that wireguard-go removes its socket in /var/run/wireguard.
        left = [
            int(pid) for ns in self.namespaces for pid in run("ip", "netns", "pids", ns, check=False).stdout.split()
        ]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 3
            while left and time.monotonic() < deadline:
                left = [pid for pid in left if os.path.exists(f"/proc/{pid}") and not _zombie(pid)]
                time.sleep(0.02)
        for ns in reversed(self.namespaces):
            run("ip", "netns", "del", ns, check=False)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)  # resolv_conf's, if any
        self.namespaces.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
