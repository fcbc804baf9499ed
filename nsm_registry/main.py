"""`nsm-registry`: serve both registry services."""

from __future__ import annotations

import asyncio

import structlog

from nsm_api import registry_pb2_grpc
from nsm_common import logs
from nsm_common.daemon import run_until_signal
from nsm_common.grpcutil import aio_server, bind_all, remove_unix_sockets
from nsm_common.identity.transport import TransportError
from nsm_registry.domain_registries import DomainRegistries, parse_domain_registries
from nsm_registry.federation import Federation
from nsm_registry.memory_store import MemoryStore
from nsm_registry.registrants import Registrants
from nsm_registry.server import EndpointRegistry, ServiceRegistry, run_expiry
from nsm_registry.settings import RegistrySettings, parse_etcd_url, parse_settings
from nsm_registry.store import Store

log = structlog.get_logger("nsm.registry")


async def serve(settings: RegistrySettings, stop: asyncio.Event) -> None:
    """Run the registry on its store until `stop`."""
    transport = settings.transport("nsm-registry", server=True)
    try:
        transport.check_listen(settings.listen)
    except TransportError as exc:
        raise SystemExit(f"nsm-registry: {exc}") from exc
    transport.warn_if_insecure("nsm-registry", settings.listen)
    policies = settings.policies("nsm-registry", tokens=transport.identity is not None)
    registrants = Registrants(transport, policies)
    store: Store
    if settings.store == "memory":
        store = MemoryStore()
    else:
        from nsm_registry.etcd_store import EtcdStore  # only an etcd registry loads its client

        store = EtcdStore(parse_etcd_url(settings.store))
    federation = Federation(
        settings.domain,
        DomainRegistries(parse_domain_registries(settings.domain_registry, settings.domain)),
        transport,
        floating=settings.floating,
    )
    server = aio_server()
    registry_pb2_grpc.add_NetworkServiceRegistryServicer_to_server(
        ServiceRegistry(store, transport, registrants, federation), server
    )
    registry_pb2_grpc.add_NetworkServiceEndpointRegistryServicer_to_server(
        EndpointRegistry(store, settings.max_expiration, transport, registrants, federation), server
    )
    bind_all(server, settings.listen, transport)
    await server.start()
    expiry = asyncio.create_task(run_expiry(store))
    following = asyncio.create_task(policies.follow())
    log.info("registry serving", listen=[str(a) for a in settings.listen], store=settings.store,
             domain=settings.domain or None, floating=settings.floating,
             domain_registries=settings.domain_registry)  # fmt: skip
    try:
        await stop.wait()
    finally:
        expiry.cancel()
        following.cancel()
        await store.close()
        await server.stop(grace=1.0)
        await federation.close()
        remove_unix_sockets(settings.listen)
        log.info("registry stopped")


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    logs.configure(settings.log_level)

    run_until_signal(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    main()
