"""One gRPC call to an agent or registry over TCP, as an outsider on the underlay would make
it, with only upstream's message definitions; prints the status as JSON.

    ip netns exec NS python -m tests.helpers.tls_probe --target 192.0.2.2:5001 \\
        --call request [--identity DIR --server-name NAME | --ca FILE | --plaintext]
        [--audience SPIFFE_ID --token signed|none|forged|edited|expired|unchained|foreign
         --foreign DIR]

With an identity it sends a path token as upstream's clients do (PyJWT, ES256; metadata
`nsm-client-token` and `nsm-client-token-expires` in Go's RFC3339Nano), or a bad one.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import sys
import time
import uuid
from pathlib import Path

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

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


def own_id(folder: Path) -> str:
    cert = x509.load_pem_x509_certificate((folder / "tls.crt").read_bytes())
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return str(uris.get_values_for_type(x509.UniformResourceIdentifier)[0])


def token_metadata(args: argparse.Namespace) -> tuple[tuple[str, str | bytes], ...]:
    """The path token as upstream's per-RPC credentials send it, or the bad kind asked for."""
    if not args.identity or args.token == "none":
        return ()
    folder = Path(args.identity)
    key = serialization.load_pem_private_key((folder / "tls.key").read_bytes(), None)
    exp = int(time.time()) + 60
    claims: dict[str, object] = {"sub": own_id(folder), "aud": [args.audience], "exp": exp}
    if args.token == "expired":
        claims["exp"] = int(time.time()) - 5
    if args.token == "unchained":
        claims["aud"] = ["spiffe://nsm.test/node/somebody-else"]
    if args.token == "forged":  # our claims, another key
        key = ec.generate_private_key(ec.SECP256R1())
    if args.token == "foreign":  # a valid token of another identity, presented by us
        other = Path(args.foreign)
        claims["sub"] = own_id(other)
        key = serialization.load_pem_private_key((other / "tls.key").read_bytes(), None)
    token = jwt.encode(claims, key, algorithm="ES256")  # type: ignore[arg-type]
    if args.token == "edited":  # signed, then the payload changed
        head, _, sig = token.split(".")
        body = dict(claims, exp=exp + 3600)
        payload = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
        token = f"{head}.{payload}.{sig}"
    stamp = datetime.datetime.fromtimestamp(exp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    return (("nsm-client-token", token), ("nsm-client-token-expires", stamp))


def call(args: argparse.Namespace, ch: grpc.Channel) -> None:
    metadata = token_metadata(args)
    path = json.dumps({"index": 0, "path_segments": []})  # upstream's registry path, JSON in `path`
    with_path = (*metadata, ("path", path)) if metadata else None
    if args.call == "request":
        cid = str(uuid.uuid4())
        conn = Connection(id=cid, network_service=args.service,
                          path=ConnPath(index=0, path_segments=[PathSegment(name="outsider", id=cid)]))  # fmt: skip
        mech = Mechanism(cls="REMOTE", type="VXLAN", parameters={"src_ip": "192.0.2.200"})
        networkservice_pb2_grpc.NetworkServiceStub(ch).Request(
            NetworkServiceRequest(connection=conn, mechanism_preferences=[mech]), timeout=5, metadata=metadata
        )
    elif args.call == "register":
        record = NetworkServiceEndpoint(
            name=args.record_name, network_service_names=["svc"], url="tcp://192.0.2.200:5001"
        )
        registry_pb2_grpc.NetworkServiceEndpointRegistryStub(ch).Register(record, timeout=5, metadata=with_path)
    else:
        registry_pb2_grpc.NetworkServiceEndpointRegistryStub(ch).Unregister(
            NetworkServiceEndpoint(name=args.name), timeout=5, metadata=with_path
        )


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--call", choices=("request", "register", "unregister"), required=True)
    p.add_argument("--name", default="ep1", help="what unregister names")
    p.add_argument("--record-name", default="rogue", help="what register names")
    p.add_argument("--service", default="svc", help="what request asks for")
    p.add_argument("--identity")
    p.add_argument("--ca")
    p.add_argument("--server-name", default="")
    p.add_argument("--plaintext", action="store_true")
    p.add_argument("--audience", default="", help="the server's SPIFFE ID, the token's aud")
    tokens = ("signed", "none", "forged", "edited", "expired", "unchained", "foreign")
    p.add_argument("--token", choices=tokens, default="signed")
    p.add_argument("--foreign", help="the identity whose token `--token foreign` presents")
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
