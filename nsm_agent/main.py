"""`nsm-agent`: the node agent's servers and its Request chain."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence

import structlog

from nsm_agent.datapath.link_events import KernelFollow
from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.datapath.path_mtu import PathMtus
from nsm_agent.datapath.tunnels import VniBook, find_underlay
from nsm_agent.datapath.wireguard import WireGuardDevice
from nsm_agent.decisions.excluded_prefixes import ExcludedPrefixesError, IPNetwork, excluded_address
from nsm_agent.decisions.traversal import RelayRef
from nsm_agent.decisions.tunnel import WIREGUARD_OVERHEAD
from nsm_agent.netns.resolve import NetnsResolver
from nsm_agent.pipeline.connect import ConnectEndpoint
from nsm_agent.pipeline.endpoint_watch import EndpointWatch, PeerWatch
from nsm_agent.pipeline.link_watch import LinkWatch
from nsm_agent.pipeline.remote_mechanism import TunnelKinds
from nsm_agent.pipeline.select import Locator
from nsm_agent.pipeline.steps import Security, agent_steps
from nsm_agent.pods.claims import ClaimServer
from nsm_agent.pods.sockets import PodSockets
from nsm_agent.registry.client import RegistryClient
from nsm_agent.registry.kept_services import KeptServices, keep_registered
from nsm_agent.registry.local_endpoints import LocalEndpoints, unregister_previous_boot
from nsm_agent.registry.proxy import EndpointRegistryProxy, ServiceRegistryProxy
from nsm_agent.settings import AgentSettings, parse_settings
from nsm_agent.state.boot import rebooted_since_last_run, record_boot
from nsm_agent.state.excluded_file import ExcludedPrefixesFile
from nsm_agent.state.journal import JournalFormatError, JournalStore
from nsm_agent.state.keys import load_or_create
from nsm_agent.state.repair import Repair
from nsm_agent.state.restore import Restore, journal_closer
from nsm_agent.traversal.advertise import RelayFinder, advertise, registered_by_agent
from nsm_agent.traversal.messages import Keys
from nsm_agent.traversal.paths import Traversal
from nsm_agent.traversal.rawudp import RawPort
from nsm_agent.traversal.relay import serve_relay
from nsm_api import connection_pb2_grpc, networkservice_pb2_grpc, registry_pb2_grpc
from nsm_common import logs
from nsm_common.chain.begin import Begin
from nsm_common.chain.chain import Chain
from nsm_common.chain.monitor import ConnectionEvents, MonitorService
from nsm_common.chain.path_tokens import OutgoingTokens
from nsm_common.chain.server import NetworkServiceServer
from nsm_common.daemon import raise_open_file_limit, run_until_signal
from nsm_common.grpcutil import aio_server, bind_all, remove_unix_sockets
from nsm_common.identity.transport import Access, TransportError

log = structlog.get_logger("nsm.agent")

# Who may ask on the TLS unix socket: this node's clients and endpoints, as upstream's
# connect (with an SVID), and agents.
LOCAL_CALLERS = ("agent", "workload")


def move_excluded(journal: JournalStore, repair: Repair, prefixes: Sequence[IPNetwork]) -> None:
    """Requests again each connection whose address the node now excludes: its endpoint sees
    the new prefixes and hands out another pair, and the wires take it in place."""
    for entry in journal.entries():
        if entry.reply is None:
            continue
        hit = excluded_address(entry.reply.context.ip_context, prefixes)
        if hit is not None:
            repair.repair(entry.conn_id, f"its address {hit[0]} is now inside the excluded prefix {hit[1]}")


async def serve(settings: AgentSettings, stop: asyncio.Event) -> None:
    """Run the agent until `stop`: servers, chain, restore from the journal; connections outlive it."""
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        # First: a journal this agent cannot read stops it before it touches anything.
        journal = JournalStore(settings.state_dir)
    except JournalFormatError as exc:
        raise SystemExit(f"nsm-agent: {exc}") from exc
    try:
        excluded = ExcludedPrefixesFile(settings.excluded_prefixes)
    except (ExcludedPrefixesError, OSError) as exc:
        raise SystemExit(f"nsm-agent: --excluded-prefixes: {exc}") from exc
    transport = settings.transport("nsm-agent", server=True)
    policies = settings.policies("nsm-agent", tokens=transport.identity is not None)
    try:
        transport.check_listen(settings.listen)
        registry = RegistryClient(settings.registry, transport=transport)
    except TransportError as exc:
        raise SystemExit(f"nsm-agent: {exc}") from exc
    transport.warn_if_insecure("nsm-agent", settings.listen)
    rebooted = rebooted_since_last_run(settings.state_dir)
    netlink = NetlinkThread()
    resolver = NetnsResolver()
    registry.watch()
    events = ConnectionEvents()
    local = LocalEndpoints(settings.state_dir)
    kept_services = KeptServices(settings.state_dir)
    try:
        underlay = await netlink.run(lambda nl: find_underlay(nl, settings.tunnel_ip))
    except ValueError as exc:
        raise SystemExit(f"nsm-agent: {exc}") from exc
    vnis = VniBook(settings.vxlan_port)
    wireguard = None
    if underlay is not None:
        keys = load_or_create(settings.state_dir)
        wg_mtu = underlay.mtu - WIREGUARD_OVERHEAD[underlay.family]
        wireguard = WireGuardDevice(keys, settings.wireguard_port, wg_mtu, settings.wireguard_go)
    path_mtus = PathMtus(underlay.mtu) if underlay is not None else None
    traversal = None
    if wireguard is not None and underlay is not None:
        wg = wireguard
        family, port = underlay.family, wg.port
        try:
            RawPort(family, port).close()  # can it be had at all (CAP_NET_RAW)? Opened when needed.
        except OSError as exc:  # the agent still serves; only NAT traversal is off
            log.warning("no NAT traversal: it needs a raw socket (CAP_NET_RAW)", error=str(exc))
        else:
            traversal = Traversal(
                Keys(wg.keys.private_path.read_text().strip()),
                lambda: RawPort(family, port),
                lambda key, addr, handshake: wg.set_endpoint(key, *addr, handshake_now=handshake),
                RelayFinder(registry, registered_by_agent(lambda: transport.roles)),
                endpoints=wg.endpoints,
            )
    kinds = TunnelKinds(
        netlink, underlay, vnis, wireguard, settings.remote_mechanisms, settings.public_ip, path_mtus, traversal
    )
    own_urls = {str(a) for a in settings.listen} | {u for u in (settings.node_url, settings.public_url) if u}
    remote = kinds.supported()
    closer = journal_closer(journal, settings.name, resolver, netlink, settings.request_timeout, events, transport)
    begin = Begin(closer, held_elsewhere=journal.holds)
    watch = EndpointWatch(events.mark_down)
    security = Security(transport.identity, policies, lambda: transport.roles)
    tokens = OutgoingTokens(transport.identity, policies)
    peers = PeerWatch(events.mark_down)
    connect = ConnectEndpoint(settings.request_timeout, watch, transport=transport, tokens=tokens, peers=peers)
    follow = KernelFollow(netlink, relocate=resolver.find)
    link_watch = LinkWatch(follow)  # what it reports goes to the repairs, which need the chain: below
    follow.attach(link_watch)
    steps = agent_steps(
        name=settings.name,
        default_lifetime=settings.default_lifetime,
        max_lifetime=settings.max_lifetime,
        netlink=netlink,
        resolver=resolver,
        registry=registry,
        locator=Locator(own_urls, local),
        kinds=kinds,
        events=events,
        journal=journal,
        begin=begin,
        connect=connect,
        security=security,
        link_watch=link_watch,
        excluded=lambda: excluded.prefixes,
    )
    chain = Chain(steps)
    repair = Repair(journal, chain, begin, events)
    link_watch.broken = repair
    # Over TLS only other agents ask this one for connections (its TCP port is for them).
    access = Access(transport, allowed=("agent",), on_unix=LOCAL_CALLERS)
    service = NetworkServiceServer(chain, access)
    server = aio_server()
    networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(service, server)
    connection_pb2_grpc.add_MonitorConnectionServicer_to_server(MonitorService(events, access), server)
    registry_pb2_grpc.add_NetworkServiceRegistryServicer_to_server(
        ServiceRegistryProxy(registry, kept_services, policies), server
    )
    registry_pb2_grpc.add_NetworkServiceEndpointRegistryServicer_to_server(
        EndpointRegistryProxy(registry, local, settings.registered_url, kept_services, policies), server
    )
    pods = PodSockets(settings.pod_sockets, settings.state_dir, service, events, resolver)
    server.add_generic_rpc_handlers((pods.handler(),))
    # Before anything is bound: a relay port that cannot be had stops the agent with nothing left.
    relay_service = None
    if settings.relay:
        if wireguard is None or underlay is None:
            raise SystemExit("nsm-agent: --relay needs a tunnel address (--tunnel-ip): the relay serves there")
        own = RelayRef((settings.public_ip or underlay.ip, settings.relay_port), wireguard.keys.public)
        try:
            relay_service, _ = await serve_relay(Keys(wireguard.keys.private_path.read_text().strip()),
                                                 underlay.ip, settings.relay_port)  # fmt: skip
        except OSError as exc:
            raise SystemExit(
                f"nsm-agent: --relay-port: cannot listen on {underlay.ip}:{settings.relay_port}: {exc}"
            ) from exc
    bind_all(server, settings.listen, transport)
    if settings.tls_socket:
        try:
            transport.bind_tls_socket(server, settings.tls_socket)
        except TransportError as exc:
            raise SystemExit(f"nsm-agent: --tls-socket: {exc}") from exc
    claims = ClaimServer(settings.claim_socket, pods) if settings.claim_socket else None
    if claims is not None:
        try:
            claims.bind()  # served after the survey, as the pods' sockets are
        except OSError as exc:
            remove_unix_sockets(settings.listen)  # what the server bound: nothing is left behind
            if settings.tls_socket:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(settings.tls_socket)
            raise SystemExit(f"nsm-agent: --claim-socket: cannot listen on {settings.claim_socket}: {exc}") from exc
    await server.start()
    if settings.tls_socket:
        os.chmod(settings.tls_socket, 0o666)  # its callers prove who they are
    for addr in settings.listen:
        if addr.scheme == "unix":
            # The node's own socket is root's: a pod gets a socket of its own (pods below).
            os.chmod(addr.path, 0o600)
    log.info(
        "agent serving",
        name=settings.name,
        listen=[str(a) for a in settings.listen],
        registry=str(settings.registry),
        public_url=settings.node_url or "none (no tcp listen address)",
        tunnel_ip=underlay.ip if underlay else "none",
        **({"interdomain_url": settings.public_url} if settings.public_url else {}),
        **({"interdomain_ip": settings.public_ip} if settings.public_ip else {}),
        underlay_mtu=underlay.mtu if underlay else 0,
        remote_mechanisms=list(remote),
    )

    async def settle() -> None:
        """A device or peer no connection needs goes, once none waiting to be carried on may
        need it; and the paths followed through NAT to the peers gone with them."""
        assert wireguard is not None
        await wireguard.reconcile(netlink)
        if traversal is not None:
            traversal.keep_only(set(wireguard.peers))

    restore = Restore(
        journal, chain, begin, events, settings.name, resolver, netlink, settings.request_timeout, transport,
        on_settled=settle if wireguard is not None else None, rebooted=rebooted,
    )  # fmt: skip
    if traversal is not None:
        traversal.start()  # before the restore: a connection carried on follows its path at once
    if restore.rebooted:
        log.info("the node rebooted since the agent last ran: undoing what the journal holds")
    outcome = await restore.run()
    # After the survey: Monitor knows every journalled connection, so a pod's socket can tell
    # whose each is from the start.
    await pods.start()
    if claims is not None:
        claims.start()
    if outcome.kept or outcome.undone or outcome.waiting:
        log.info(
            "carried on after restart",
            connections=outcome.kept,
            intact=outcome.intact,
            rebuilt=outcome.rebuilt,
            undone=outcome.undone,
            waiting_for_next_hop=outcome.waiting,
            seconds=round(outcome.seconds, 3),
        )
    record_boot(settings.state_dir)
    unregistering = asyncio.create_task(unregister_previous_boot(local, registry, kept_services)) if rebooted else None
    keeping = asyncio.create_task(keep_registered(kept_services, registry))
    following = asyncio.create_task(policies.follow())
    moving = asyncio.create_task(excluded.follow(lambda prefixes: move_excluded(journal, repair, prefixes)))
    advertising = (
        asyncio.create_task(advertise(registry, settings.name, settings.registered_url, own))
        if relay_service is not None
        else None
    )
    try:
        await stop.wait()
    finally:
        for task in (keeping, unregistering, following, moving, advertising):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if claims is not None:
            await claims.stop()
        await pods.stop()
        await server.stop(grace=1.0)
        await service.drain()
        follow.close()  # first: no new repairs while they are stopped
        await restore.aclose()
        await repair.aclose()
        # Connections outlive the agent: the kernel carries their traffic, and
        # the next start carries on from the journal. Stopping serves no one.
        await watch.aclose()
        await peers.aclose()
        await connect.aclose()
        if traversal is not None:
            await traversal.aclose()
        if relay_service is not None:
            relay_service.close()
        await registry.close()
        netlink.close()
        remove_unix_sockets(settings.listen)
        if settings.tls_socket:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(settings.tls_socket)
        log.info("agent stopped")


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    logs.configure(settings.log_level)
    raise_open_file_limit()
    run_until_signal(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    main()
