"""One gRPC call to an agent or registry over TCP, as an outsider on the underlay would make
it, with only upstream's message definitions; prints the status as JSON.

    ip netns exec NS python -m tests.helpers.tls_probe --target 192.0.2.2:5001 \\
        --call request [--identity DIR --server-name NAME | --ca FILE | --plaintext]
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

import grpc

from nsm_api import networkservice_pb2_grpc, registry_pb2_grpc
from nsm_api.connection_pb2 import Connection, Mechanism, PathSegment
from nsm_api.connection_pb2 import Path as ConnPath
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_api.registry_pb2 import NetworkServiceEndpoint


def channel(args: argparse.Namespace) -> grpc.Channel:
    if args.plaintext:
        return grpc.insecure_channel(args.target)
    options = [("grpc.ssl_target_name_override", args.server_name)]
    if args.identity:
        folder = Path(args.identity)
        creds = grpc.ssl_channel_credentials(
            (folder / "ca.crt").read_bytes(), (folder / "tls.key").read_bytes(), (folder / "tls.crt").read_bytes()
        )
    else:  # TLS, trusting the CA, but no certificate of our own
        creds = grpc.ssl_channel_credentials(Path(args.ca).read_bytes())
    return grpc.secure_channel(args.target, creds, options=options)


def call(args: argparse.Namespace, ch: grpc.Channel) -> None:
    if args.call == "request":
        cid = str(uuid.uuid4())
        conn = Connection(id=cid, network_service=args.service,
                          path=ConnPath(index=0, path_segments=[PathSegment(name="outsider", id=cid)]))  # fmt: skip
        mech = Mechanism(cls="REMOTE", type="VXLAN", parameters={"src_ip": "192.0.2.200"})
        networkservice_pb2_grpc.NetworkServiceStub(ch).Request(
            NetworkServiceRequest(connection=conn, mechanism_preferences=[mech]), timeout=5
        )
    elif args.call == "register":
        record = NetworkServiceEndpoint(name="rogue", network_service_names=["svc"], url="tcp://192.0.2.200:5001")
        registry_pb2_grpc.NetworkServiceEndpointRegistryStub(ch).Register(record, timeout=5)
    else:
        registry_pb2_grpc.NetworkServiceEndpointRegistryStub(ch).Unregister(
            NetworkServiceEndpoint(name=args.name), timeout=5
        )


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--call", choices=("request", "register", "unregister"), required=True)
    p.add_argument("--name", default="ep1", help="what unregister names")
    p.add_argument("--service", default="svc", help="what request asks for")
    p.add_argument("--identity")
    p.add_argument("--ca")
    p.add_argument("--server-name", default="")
    p.add_argument("--plaintext", action="store_true")
    args = p.parse_args()
    ch = channel(args)
    try:
        call(args, ch)
        print(json.dumps({"code": "OK", "details": ""}))
    except grpc.RpcError as exc:
        print(json.dumps({"code": exc.code().name, "details": exc.details()}))  # type: ignore[attr-defined]
    finally:
        ch.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
