"""`nsmctl`: connect, close, get, run an endpoint, and be a pod's client (`pod`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict
from pydantic import ValidationError

from nsm_api import registry_pb2_grpc
from nsm_api.connection_pb2 import UP, Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_api.registry_pb2 import NetworkServiceEndpointQuery, NetworkServiceQuery
from nsm_client.claim import ClaimError, ensure, keep_claimed
from nsm_client.cli import certs
from nsm_client.cli.inputs import ConnectInput, EndpointInput, netns_path, parse_labels
from nsm_client.runtime import AgentClient, PodScope, kernel_request
from nsm_common import logs
from nsm_common.chain.path import DEFAULT_LIFETIME
from nsm_common.daemon import run_until_signal
from nsm_common.identity.spiffe_id import SpiffeId, SpiffeIdError
from nsm_common.identity.svid import IdentityError
from nsm_common.identity.transport import Transport, TransportError
from nsm_common.settings import truthy
from nsm_common.timeutil import ts_seconds
from nsm_common.urls import AGENT_PORT, DEFAULT_SOCKET, Address, UrlError, parse_address
from nsm_k8s import AnnotationError, Requested, parse, parse_awareness_groups


class CliError(Exception):
    pass


def agent_address(args: argparse.Namespace) -> Address:
    """The agent to talk to: --agent, else NSM_CONNECT_TO, else the node's socket."""
    try:
        return parse_address(args.agent or os.environ.get("NSM_CONNECT_TO") or DEFAULT_SOCKET, default_port=AGENT_PORT)
    except UrlError as exc:
        raise CliError(f"--agent: {exc}") from exc


def transport_of(args: argparse.Namespace, server: bool = False) -> Transport:
    """--identity and --insecure (or their variables) as a transport (SERVER: it listens on TCP,
    so its certificate needs the DNS SAN); a bad identity names the flag."""
    folder = args.identity or os.environ.get("NSM_IDENTITY_DIR") or None
    insecure = args.insecure or truthy(os.environ.get("NSM_INSECURE"))
    try:
        return Transport.load(Path(folder) if folder else None, insecure=insecure, server=server)
    except IdentityError as exc:  # it names the flag or the variable
        raise CliError(str(exc)) from exc


def _server_id(args: argparse.Namespace, transport: Transport) -> SpiffeId | None:
    """--server-id, else (with an identity) the registry's: what a TCP server must prove."""
    if args.server_id:
        try:
            return SpiffeId.parse(args.server_id)
        except SpiffeIdError as exc:
            raise CliError(f"--server-id: {exc}") from exc
    return transport.registry_id()


def agent_client(args: argparse.Namespace) -> AgentClient:
    """A client of --agent, over mutual TLS when that is a TCP address."""
    transport = transport_of(args)
    try:
        return AgentClient(agent_address(args), args.timeout, transport, _server_id(args, transport))
    except TransportError as exc:
        raise CliError(f"--agent: {exc}") from exc


FLAG_OF_FIELD = {"cidrs": "cidr", "labels": "label"}
AWARENESS_HELP = (
    "services whose addresses may overlap in this pod, [URL,URL],[URL] as upstream's (env NSM_AWARENESS_GROUPS)"
)
DEFAULT_PBR_CONFIG = "/etc/policy-based-routing/config.yaml"  # upstream's endpoints read it there


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        name = FLAG_OF_FIELD.get(str(err["loc"][0]), str(err["loc"][0])) if err["loc"] else "input"
        field = "--" + name.replace("_", "-")
        parts.append(f"{field}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _labels(items: list[str] | None) -> dict[str, str]:
    try:
        return parse_labels(items)
    except ValueError as exc:
        raise CliError(f"--label: {exc}") from exc


def _tunnel(conn: Connection) -> str:
    """How the connection crosses: the first hop's tunnel, or a veth on one node."""
    for seg in conn.path.path_segments:
        if "tunnel" in seg.metrics:
            return f"{seg.metrics['tunnel']} vni {seg.metrics.get('vni', '?')}"
    return "veth"


def _conn_summary(conn: Connection) -> dict[str, object]:
    ip = conn.context.ip_context
    return {
        "id": conn.path.path_segments[0].id if conn.path.path_segments else conn.id,
        "service": conn.network_service,
        "endpoint": conn.network_service_endpoint_name,
        "interface": conn.mechanism.parameters.get("name", ""),
        "netns": conn.mechanism.parameters.get("inodeURL", ""),
        "client_ips": list(ip.src_ip_addrs),
        "endpoint_ips": list(ip.dst_ip_addrs),
        "state": "UP" if conn.state == UP else "DOWN",
        "wire": _tunnel(conn),
        "mtu": conn.context.MTU,
    }


def _table(rows: Sequence[dict[str, object]], columns: Sequence[str]) -> str:
    def cell(v: object) -> str:
        return ",".join(map(str, v)) if isinstance(v, list) else str(v)

    widths = [max([len(c)] + [len(cell(r.get(c, ""))) for r in rows]) for c in columns]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    for r in rows:
        lines.append("  ".join(cell(r.get(c, "")).ljust(w) for c, w in zip(columns, widths, strict=True)))
    return "\n".join(lines)


def cmd_connect(args: argparse.Namespace) -> int:
    try:
        inp = ConnectInput(netns=args.netns, service=args.service, ifname=args.ifname or "", labels=_labels(args.label))
    except ValidationError as exc:
        raise CliError(_validation_message(exc)) from exc
    request = kernel_request(inp.netns, inp.service, inp.ifname, inp.labels, client_name=args.client_name)
    pod = PodScope(os.stat(inp.netns).st_ino, _awareness_groups(args))
    if args.watch:
        return _connect_and_keep(args, request, inp.netns, pod)
    client = agent_client(args)
    try:
        conn = client.request(request, pod)
    finally:
        client.close_channel()
    if args.output == "json":
        print(json.dumps(_conn_summary(conn), indent=2))
    else:
        ip = conn.context.ip_context
        print(
            f"connected {conn.id}: {conn.mechanism.parameters.get('name', '')} {','.join(ip.src_ip_addrs)} "
            f"-> {conn.network_service_endpoint_name} {','.join(ip.dst_ip_addrs)}"
        )
    return 0


def _print_event(what: str, conn: Connection | None) -> None:
    """One JSON line per event of a kept connection."""
    line: dict[str, object] = {"event": what, "at": round(time.time(), 3)}
    if conn is not None:
        line.update(_conn_summary(conn))
    print(json.dumps(line), flush=True)


def _awareness_groups(args: argparse.Namespace) -> list[list[Requested]]:
    """--awareness-groups, else NSM_AWARENESS_GROUPS (upstream's syntax)."""
    try:
        return parse_awareness_groups(args.awareness_groups or os.environ.get("NSM_AWARENESS_GROUPS", ""))
    except AnnotationError as exc:
        raise CliError(f"--awareness-groups: {exc}") from exc


def _connect_and_keep(args: argparse.Namespace, request: NetworkServiceRequest, netns: str, pod: PodScope) -> int:
    """Connect, then refresh and heal until SIGINT/SIGTERM, then close."""
    from nsm_client.keeper import Keeper

    if not request.mechanism_preferences[0].parameters.get("name"):
        client = agent_client(args)
        try:
            pod.name_interface(request, client.connections().values())
        finally:
            client.close_channel()
    keeper = Keeper(agent_address(args), request, netns, probe_interval=args.probe_interval, on_event=_print_event,
                    timeout=args.timeout, pod=pod)  # fmt: skip
    run_until_signal(keeper.run)
    return 0


def cmd_pod(args: argparse.Namespace) -> int:
    """The pod's client, as the webhook injects it: connect what the annotation asks
    (init container, --once), or keep those connections (sidecar, --watch)."""
    import uuid

    value = args.services or os.environ.get("NSM_NETWORK_SERVICES", "")
    try:
        entries = parse(value)
    except AnnotationError as exc:
        raise CliError(f"--services: {exc}") from exc
    pod = f"{os.environ.get('NSM_POD_NAMESPACE', 'default')}/{os.environ.get('NSM_POD_NAME', os.uname().nodename)}"
    own = "/proc/self/ns/net"
    st = os.stat(own)
    scope = PodScope(st.st_ino, _awareness_groups(args))
    requests = []
    for entry in entries:
        # The same id in the init container and the sidecar: the sidecar adopts.
        cid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"networkservicemesh.io/{pod}/{entry.ifname}"))
        req = kernel_request(own, entry.service, entry.ifname, entry.labels, client_name=pod, conn_id=cid)
        # A PID means nothing on the node: name the namespace by its inode.
        req.mechanism_preferences[0].parameters["inodeURL"] = f"inode://{st.st_dev}/{st.st_ino}"
        requests.append(req)
    claim_socket = args.claim_socket or os.environ.get("NSM_CLAIM_SOCKET", "")
    own_socket = _claimed_socket(args, claim_socket)
    if args.once:
        client = agent_client(args)
        try:
            for req in requests:
                conn = client.request(req, scope)
                print(json.dumps({"event": "connected", **_conn_summary(conn)}), flush=True)
        finally:
            client.close_channel()
        return 0
    from nsm_client.keeper import Keeper
    from nsm_client.prober import Prober

    async def keep_all(stop: asyncio.Event) -> None:
        prober = Prober()  # one thread and socket for all of the pod's connections
        keepers = [
            Keeper(agent_address(args), r, own, on_event=_print_event, timeout=args.timeout, prober=prober, pod=scope)
            for r in requests
        ]
        claiming = (
            [keep_claimed(claim_socket, own_socket, stop, lambda line: print(json.dumps(line), flush=True))]
            if own_socket
            else []
        )
        try:
            await asyncio.gather(*(k.run(stop) for k in keepers), *claiming)
        finally:
            prober.close()

    run_until_signal(keep_all)
    return 0


def _claimed_socket(args: argparse.Namespace, claim_socket: str) -> str:
    """With a claim socket: the path of the pod's own socket (the agent's unix address, in a
    folder of the pod's), claimed now unless it answers already; else ""."""
    if not claim_socket:
        return ""
    agent = agent_address(args)
    if agent.scheme != "unix":
        raise CliError(f"--claim-socket: the agent's address must be the pod's unix socket, not {agent}")
    try:
        if ensure(claim_socket, agent.path):
            print(json.dumps({"event": "claimed", "socket": agent.path}), flush=True)
    except ClaimError as exc:
        raise CliError(f"--claim-socket: {exc}") from exc
    return agent.path


def cmd_close(args: argparse.Namespace) -> int:
    client = agent_client(args)
    try:
        found = client.close_id(args.id)
    finally:
        client.close_channel()
    if not found:
        raise CliError(f"no connection with id {args.id!r} on this agent")
    print(f"closed {args.id}")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    client = agent_client(args)
    channel = client.channel  # the registry services too: the agent's proxy, or the registry itself
    try:
        if args.kind == "connections":
            conns = list(client.connections().values())
            if args.output == "json":
                print(json.dumps([MessageToDict(c) for c in conns], indent=2))
            else:
                rows = [_conn_summary(c) for c in conns]
                print(
                    _table(
                        rows, ["id", "service", "endpoint", "interface", "client_ips", "endpoint_ips", "wire", "state"]
                    )
                )
        elif args.kind == "services":
            stub = registry_pb2_grpc.NetworkServiceRegistryStub(channel)
            services = [r.network_service for r in stub.Find(NetworkServiceQuery(), timeout=args.timeout)]
            if args.output == "json":
                print(json.dumps([MessageToDict(s) for s in services], indent=2))
            else:
                print(
                    _table(
                        [{"name": s.name, "payload": s.payload, "matches": len(s.matches)} for s in services],
                        ["name", "payload", "matches"],
                    )
                )
        else:
            estub = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)
            eps = [r.network_service_endpoint for r in estub.Find(NetworkServiceEndpointQuery(), timeout=args.timeout)]
            if args.output == "json":
                print(json.dumps([MessageToDict(e) for e in eps], indent=2))
            else:
                rows = [
                    {
                        "name": e.name,
                        "services": list(e.network_service_names),
                        "url": e.url,
                        "expires": f"in {max(0, int(ts_seconds(e.expiration_time) - time.time()))}s",
                    }
                    for e in eps
                ]
                print(_table(rows, ["name", "services", "url", "expires"]))
    finally:
        client.close_channel()
    return 0


def cmd_endpoint(args: argparse.Namespace) -> int:
    from nsm_endpoint import EndpointConfig, EndpointRuntime, IpamPolicy, PolicyRoutesError, load_policy_routes

    try:
        policy = IpamPolicy.parse(args.ipam_policy or os.environ.get("NSM_IPAM_POLICY") or "polite")
    except ValueError as exc:
        raise CliError(f"--ipam-policy: {exc}") from exc
    cidrs = args.cidr or [c for c in [os.environ.get("NSM_CIDR_PREFIX", "")] if c]
    if not cidrs:
        raise CliError("--cidr: give at least one pool (or env NSM_CIDR_PREFIX)")
    try:
        inp = EndpointInput(
            netns=args.netns,
            name=args.name,
            service=args.service,
            cidrs=cidrs,
            payload=args.payload,
            labels=_labels(args.label),
            ipam_policy=policy,
        )
    except ValidationError as exc:
        raise CliError(_validation_message(exc)) from exc
    pbr = args.pbr_config or os.environ.get("NSM_PBR_CONFIG_PATH") or ""
    try:
        policy_routes = load_policy_routes(pbr or DEFAULT_PBR_CONFIG, required=bool(pbr))
    except PolicyRoutesError as exc:
        raise CliError(f"--pbr-config: {exc}") from exc
    try:
        listen = parse_address(args.listen or f"unix:///var/lib/networkservicemesh/endpoints/{inp.name}.sock")
    except UrlError as exc:
        raise CliError(f"--listen: {exc}") from exc
    # Enter the pod's namespace before gRPC starts any thread: every thread
    # created afterwards inherits it.
    from pyroute2.netns import setns

    setns(inp.netns, flags=0)
    logs.configure(args.log_level)
    config = EndpointConfig(
        name=inp.name,
        service=inp.service,
        payload=inp.payload,
        labels=inp.labels,
        cidrs=inp.cidrs,
        ipam_policy=inp.ipam_policy,
        policy_routes=policy_routes,
        listen=listen,
        registry=agent_address(args),
        lifetime=args.lifetime,
    )

    transport = transport_of(args, server=listen.scheme == "tcp")
    try:
        transport.check_listen([listen])
        runtime = EndpointRuntime(config, transport, _server_id(args, transport))
        transport.credentials(config.registry, runtime.registry_id)  # raises before anything starts
    except TransportError as exc:
        raise CliError(str(exc)) from exc
    run_until_signal(runtime.serve)
    return 0


def cmd_pod_socket(args: argparse.Namespace) -> int:
    """A socket of the pod's own at the agent (asked on the node's socket): its callers may name
    only that namespace, and see and close only its connections."""
    try:
        netns = netns_path(args.netns)
    except ValueError as exc:
        raise CliError(f"--netns: {exc}") from exc
    client = agent_client(args)
    try:
        body = json.dumps({"netns": netns, "name": args.name or ""}).encode()
        call = client.channel.unary_unary("/nsmpy.PodSockets/Open", request_serializer=None, response_deserializer=None)
        opened = json.loads(call(body, timeout=args.timeout))
    finally:
        client.close_channel()
    print(json.dumps(opened, indent=2) if args.output == "json" else opened["socket"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nsmctl", description="Network Service Mesh command line")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--agent", help=f"node agent address (env NSM_CONNECT_TO; default {DEFAULT_SOCKET})")
    common.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the agent")
    common.add_argument("-o", "--output", choices=("table", "json"), default="table")
    common.add_argument("--identity", metavar="DIR",
                        help="folder holding tls.crt, tls.key and ca.crt (env NSM_IDENTITY_DIR)")  # fmt: skip
    common.add_argument("--insecure", action="store_true", help="plaintext gRPC over TCP (env NSM_INSECURE)")
    common.add_argument("--server-id", metavar="SPIFFE_ID",
                        help="the ID a TCP agent or registry must prove (default: the registry's)")  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("connect", parents=[common], help="ask for a connection to a network service")
    c.add_argument("--netns", required=True, help="the pod: ip netns name, namespace path, or PID")
    c.add_argument("--service", required=True)
    c.add_argument("--ifname", help="interface name in the pod (default: chosen)")
    c.add_argument("--label", action="append", help="KEY=VALUE, repeatable")
    c.add_argument("--client-name", default="nsmctl")
    c.add_argument("--watch", action="store_true", help="stay: refresh, heal, and close on SIGINT/SIGTERM")
    c.add_argument("--awareness-groups", metavar="GROUPS", help=AWARENESS_HELP)
    c.add_argument("--probe-interval", type=float, default=0.2, help="seconds between data-plane probes (--watch)")
    c.set_defaults(func=cmd_connect)

    pd = sub.add_parser(
        "pod",
        parents=[common],
        help="a pod's client: connect its annotation's services",
        description="A pod's client, as the webhook injects it; the pod is named by env NSM_POD_NAMESPACE "
        "and NSM_POD_NAME.",
    )
    mode = pd.add_mutually_exclusive_group(required=True)
    mode.add_argument("--once", action="store_true", help="connect and exit (init container)")
    mode.add_argument("--watch", action="store_true", help="adopt, refresh, heal, close on exit (sidecar)")
    pd.add_argument("--services", help="the annotation's value (default: env NSM_NETWORK_SERVICES)")
    pd.add_argument("--awareness-groups", metavar="GROUPS", help=AWARENESS_HELP)
    pd.add_argument("--claim-socket", metavar="PATH",
                    help="the agent's claim socket: get the pod's own socket there (env NSM_CLAIM_SOCKET)")  # fmt: skip
    pd.set_defaults(func=cmd_pod)

    x = sub.add_parser("close", parents=[common], help="close a connection by id")
    x.add_argument("id")
    x.set_defaults(func=cmd_close)

    g = sub.add_parser("get", parents=[common], help="list services, endpoints or connections")
    g.add_argument("kind", choices=("services", "endpoints", "connections"))
    g.set_defaults(func=cmd_get)

    e = sub.add_parser("endpoint", parents=[common], help="run an endpoint in a namespace")
    e.add_argument("--netns", required=True, help="the endpoint's pod: ip netns name, namespace path, or PID")
    e.add_argument("--name", required=True)
    e.add_argument("--service", required=True)
    e.add_argument(
        "--cidr",
        action="append",
        help="pool for point-to-point addresses, e.g. 10.60.0.0/24; repeat it or give a comma list for more "
        "(an IPv6 pool: dual stack; a pair from each) (env NSM_CIDR_PREFIX)",
    )
    e.add_argument("--ipam-policy", help="polite (keep a client's address that is free here) or strict "
                   "(env NSM_IPAM_POLICY; default polite)")  # fmt: skip
    e.add_argument("--pbr-config", metavar="FILE", help="policy routes for the client's side, upstream's YAML "
                   f"(env NSM_PBR_CONFIG_PATH; default {DEFAULT_PBR_CONFIG} if it exists)")  # fmt: skip
    e.add_argument("--payload", default="IP")
    e.add_argument("--label", action="append", help="KEY=VALUE, repeatable")
    e.add_argument("--listen", help="unix:///PATH of the endpoint's own socket")
    e.add_argument("--lifetime", type=float, default=DEFAULT_LIFETIME, help="connection lifetime in seconds")
    e.add_argument("--log-level", default="info")
    e.set_defaults(func=cmd_endpoint)

    ps = sub.add_parser("pod-socket", parents=[common], help="a socket of a pod's own at the agent")
    ps.add_argument("--netns", required=True, help="the pod: ip netns name, namespace path, or PID")
    ps.add_argument("--name", help="the socket's file name, without .sock (default: ino-INODE)")
    ps.set_defaults(func=cmd_pod_socket)

    certs.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        sys.exit(func(args))
    except (CliError, certs.CertsError) as exc:
        print(f"nsmctl: {exc}", file=sys.stderr)
        sys.exit(2)
    except grpc.RpcError as exc:
        print(f"nsmctl: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        sys.exit(1)


if __name__ == "__main__":
    main()
