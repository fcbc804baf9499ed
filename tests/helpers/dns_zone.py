"""A real DNS server for tests (dnslib's, on a loopback UDP port it picks) answering from a
zone the test writes, and a dnspython resolver that asks only it.

    python -m tests.helpers.dns_zone --listen ADDR --srv NAME=PORT --a NAME=ADDR ...

serves the same way on port 53 of ADDR, in whatever namespace it is started (the
interdomain test bed's internet), until it is stopped."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dns.asyncresolver
from dnslib import QTYPE, RR, SRV, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer

# (name with its trailing dot, record type) -> the record's data (dnslib's SRV, A, AAAA...)
Records = dict[tuple[str, str], Any]


class Zone(BaseResolver):  # type: ignore[misc]
    """Answers from RECORDS; a name it has not is NXDOMAIN (a name with other records: no answer)."""

    def __init__(self, records: Records) -> None:
        self.records = records
        self.asked: list[tuple[str, str]] = []

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        qname, qtype = str(request.q.qname), QTYPE[request.q.qtype]
        self.asked.append((qname, qtype))
        record = self.records.get((qname, qtype))
        if record is not None:
            reply.add_answer(RR(qname, getattr(QTYPE, qtype), rdata=record, ttl=5))
        elif not any(name == qname for name, _ in self.records):
            reply.header.rcode = 3  # NXDOMAIN
        return reply


@contextmanager
def serving(records: Records, address: str = "127.0.0.1") -> Iterator[tuple[Zone, tuple[str, int]]]:
    """A DNS server for RECORDS on ADDRESS; yields its zone (what it was asked) and (host, port)."""
    zone = Zone(records)
    server = DNSServer(zone, port=0, address=address)
    server.start_thread()
    try:
        yield zone, (address, server.server.server_address[1])
    finally:
        server.stop()
        server.server.server_close()


def resolver_for(address: tuple[str, int]) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [address[0]]
    resolver.port = address[1]
    resolver.lifetime = 3.0
    return resolver


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="a DNS server answering SRV and A records")
    p.add_argument("--listen", required=True)
    p.add_argument("--srv", action="append", default=[], metavar="NAME=PORT")
    p.add_argument("--a", action="append", default=[], metavar="NAME=ADDR")
    args = p.parse_args(argv)
    records: Records = {}
    for item in args.srv:
        name, _, port = item.partition("=")
        records[(f"{name}.", "SRV")] = SRV(priority=0, weight=0, port=int(port), target=f"{name}.")
    for item in args.a:
        name, _, addr = item.partition("=")
        records[(f"{name}.", "A")] = A(addr)
    server = DNSServer(Zone(records), port=53, address=args.listen)
    server.start_thread()
    print(f"dns serving on {args.listen}:53", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
