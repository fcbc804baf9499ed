"""etcd on loopback for tests and the demo: one member or a small cluster, in a
data folder of the test bed, removed with it."""

from __future__ import annotations

from dataclasses import dataclass

from testbed.bed import Proc, Testbed, free_port


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    proc: Proc | None = None


@dataclass
class Etcd:
    bed: Testbed
    members: list[Member]
    netns: str | None = None

    @property
    def url(self) -> str:
        """The registry's --store value."""
        return "etcd://" + ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)

    def start(self, member: Member) -> None:
        cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        data = self.bed.dir / f"etcd-{member.name}"
        member.proc = self.bed.start(
            f"etcd-{member.name}",
            [
                "etcd", "--name", member.name, "--data-dir", str(data),
                "--listen-client-urls", f"http://127.0.0.1:{member.client_port}",
                "--advertise-client-urls", f"http://127.0.0.1:{member.client_port}",
                "--listen-peer-urls", f"http://127.0.0.1:{member.peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{member.peer_port}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--heartbeat-interval", "50", "--election-timeout", "500",
            ],
            netns=self.netns,
        )  # fmt: skip

    def wait_ready(self, member: Member, timeout: float = 30) -> None:
        assert member.proc is not None
        self.bed.wait_for(member.proc, "ready to serve client requests", timeout=timeout)

    def stop(self, member: Member) -> None:
        if member.proc is not None:
            member.proc.stop()
            member.proc = None


def start_etcd(bed: Testbed, members: int = 1, netns: str | None = None) -> Etcd:
    etcd = Etcd(bed, [Member(f"m{i}", free_port(), free_port()) for i in range(members)], netns)
    for m in etcd.members:
        etcd.start(m)
    for m in etcd.members:
        etcd.wait_ready(m)
    return etcd
