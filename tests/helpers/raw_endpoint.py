"""An endpoint written only against the NSM v1 wire definitions (no project code
but the generated stubs), as someone else's endpoint would be.

Modes:
  good      point-to-point IPAM, answers KERNEL with inode://DEV/INO (conformance)
  hang      never answers a Request (deadline)
  crash     exits the process in the middle of a Request
  bad-cidr  answers with a malformed address
  p2p       upstream's point-to-point IPAM on --cidr: a pair avoiding the Request's
            excluded prefixes, keeping the client's addresses when they are free there,
            adding its own to what the Request brings (upstream's default policy)
Every Request and Close is appended to --journal as one line.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import threading
import time
from concurrent import futures

import grpc
from google.protobuf.empty_pb2 import Empty

from nsm_api import networkservice_pb2_grpc, registry_pb2_grpc
from nsm_api.connection_pb2 import Connection, Mechanism, PathSegment
from nsm_api.connectioncontext_pb2 import Route
from nsm_api.registry_pb2 import Destination, Match, NetworkService, NetworkServiceEndpoint


class Endpoint(networkservice_pb2_grpc.NetworkServiceServicer):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        st = os.stat(args.netns)
        self.inode_url = f"inode://{st.st_dev}/{st.st_ino}"
        self.next = 1
        self.leases: dict[str, int] = {}
        self.pairs: dict[str, tuple[object, object]] = {}
        self.lock = threading.Lock()

    def log(self, line: str) -> None:
        with open(self.args.journal, "a") as f:
            f.write(line + "\n")

    def Request(self, request, context):  # type: ignore[no-untyped-def]
        conn = Connection()
        conn.CopyFrom(request.connection)
        self.log(f"request {conn.id}")
        if self.args.mode == "hang":
            time.sleep(3600)
        if self.args.mode == "crash":
            os._exit(3)
        # Our own segment, per the path rules.
        index = conn.path.index
        segs = conn.path.path_segments
        if index + 1 < len(segs) and segs[index + 1].name == self.args.name:
            mine = segs[index + 1]
        else:
            mine = segs.add()
            mine.CopyFrom(PathSegment(name=self.args.name, id=f"{self.args.name}-{conn.id}"))
        if self.args.mode == "p2p":
            self.p2p(conn)
            conn.mechanism.CopyFrom(Mechanism(cls="LOCAL", type="KERNEL", parameters={"inodeURL": self.inode_url}))
            return conn
        with self.lock:
            n = self.leases.setdefault(conn.id, self.next)
            if n == self.next:
                self.next += 2
        ip = conn.context.ip_context
        del ip.src_ip_addrs[:], ip.dst_ip_addrs[:], ip.src_routes[:], ip.dst_routes[:]
        base = self.args.prefix
        if self.args.mode == "bad-cidr":
            ip.src_ip_addrs.append(f"{base}.{n + 1}.300/32")
        else:
            ip.src_ip_addrs.append(f"{base}.{n + 1}/32")
        ip.dst_ip_addrs.append(f"{base}.{n}/32")
        ip.src_routes.append(Route(prefix=f"{base}.{n}/32"))
        ip.dst_routes.append(Route(prefix=f"{base}.{n + 1}/32"))
        conn.mechanism.CopyFrom(Mechanism(cls="LOCAL", type="KERNEL", parameters={"inodeURL": self.inode_url}))
        return conn

    def p2p(self, conn: Connection) -> None:
        ip = conn.context.ip_context
        self.log(f"excluded {conn.id} {','.join(ip.excluded_prefixes)}")
        self.log(f"brought {conn.id} {','.join(ip.src_ip_addrs)}")
        net = ipaddress.ip_network(self.args.cidr)
        excluded = [ipaddress.ip_network(p, strict=False) for p in ip.excluded_prefixes]
        with self.lock:
            used = {a for k, pair in self.pairs.items() if k != conn.id for a in pair}

            def free(a: object) -> bool:
                return (isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address)) and a in net and a not in used
                        and not any(a.version == n.version and a in n for n in excluded))  # fmt: skip

            pair = self.pairs.get(conn.id)
            if pair is None or not all(free(a) for a in pair):

                def brought(cidrs: list[str]) -> object:
                    return next((a for a in (ipaddress.ip_interface(c).ip for c in cidrs) if free(a)), None)

                dst, src = brought(list(ip.dst_ip_addrs)), brought(list(ip.src_ip_addrs))
                pool = (a for a in net if free(a) and a not in (dst, src))
                pair = (dst or next(pool), src or next(pool))
                self.pairs[conn.id] = pair
        dst_cidr, src_cidr = (f"{a}/{a.max_prefixlen}" for a in pair)  # type: ignore[attr-defined]
        for field, value in ((ip.src_ip_addrs, src_cidr), (ip.dst_ip_addrs, dst_cidr)):
            if value not in field:
                field.append(value)
        if dst_cidr not in [r.prefix for r in ip.src_routes]:
            ip.src_routes.append(Route(prefix=dst_cidr))
        if src_cidr not in [r.prefix for r in ip.dst_routes]:
            ip.dst_routes.append(Route(prefix=src_cidr))

    def Close(self, request, context):  # type: ignore[no-untyped-def]
        self.log(f"close {request.id}")
        with self.lock:
            self.leases.pop(request.id, None)
            self.pairs.pop(request.id, None)
        return Empty()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="good")
    p.add_argument("--name", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--netns", required=True, help="path of the namespace this endpoint serves from")
    p.add_argument("--listen", required=True, help="unix:///PATH")
    p.add_argument("--registry", required=True, help="unix:///PATH of the agent or registry")
    p.add_argument("--journal", required=True)
    p.add_argument("--prefix", default="10.70.0", help="first three octets of the addresses it hands out")
    p.add_argument("--cidr", default="", help="the pool of mode p2p")
    p.add_argument("--payload", default="", help="the service's payload, as registered (once, at start)")
    p.add_argument("--match", action="append", default=[], help="KEY=VALUE: a match on the client's labels")
    p.add_argument("--renew", action="store_true", help="renew the endpoint record (only it) as upstream does")
    args = p.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(Endpoint(args), server)
    server.add_insecure_port(args.listen)
    server.start()
    channel = grpc.insecure_channel(args.registry)
    service = NetworkService(name=args.service, payload=args.payload)
    for item in args.match:
        key, _, value = item.partition("=")
        service.matches.append(Match(source_selector={key: value}, routes=[Destination(destination_selector={})]))
    registry_pb2_grpc.NetworkServiceRegistryStub(channel).Register(service, timeout=5)
    # Upstream endpoints register without an expiration; the registry picks one.
    record = NetworkServiceEndpoint(name=args.name, network_service_names=[args.service], url=args.listen)
    endpoints = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)
    granted = endpoints.Register(record, timeout=5)
    print(f"raw endpoint registered, expires {granted.expiration_time.seconds}", flush=True)
    while args.renew:  # the endpoint record only, never the service again
        time.sleep(max(0.2, (granted.expiration_time.seconds - time.time()) / 3))
        try:
            granted = endpoints.Register(record, timeout=5)
        except grpc.RpcError:
            time.sleep(0.2)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
