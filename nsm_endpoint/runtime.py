"""Run an endpoint: serve Requests, register, keep the registration alive, unregister."""

from __future__ import annotations

import asyncio
import contextlib
import os

import grpc
import structlog
from pydantic import BaseModel, ConfigDict, Field

from nsm_api import connection_pb2_grpc, networkservice_pb2_grpc, registry_pb2_grpc
from nsm_api.connectioncontext_pb2 import PolicyRoute
from nsm_api.registry_pb2 import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceLabels,
    NetworkServiceQuery,
)
from nsm_common.chain.authorize import Authorize
from nsm_common.chain.begin import Begin
from nsm_common.chain.chain import Chain, Step
from nsm_common.chain.monitor import ConnectionEvents, Monitor, MonitorService
from nsm_common.chain.path import DEFAULT_LIFETIME
from nsm_common.chain.path_tokens import PresentedToken, SignSegment
from nsm_common.chain.server import NetworkServiceServer
from nsm_common.chain.update_path import UpdatePath
from nsm_common.grpcutil import aio_server, bind_all, remove_unix_sockets
from nsm_common.identity.spiffe_id import SpiffeId
from nsm_common.identity.transport import LOCAL_ONLY, Access, Transport
from nsm_common.location import with_location
from nsm_common.names import MAX_NAME
from nsm_common.policy.policies import Policies
from nsm_common.registry_path import call_metadata
from nsm_common.timeutil import now, ts_seconds
from nsm_common.urls import Address
from nsm_endpoint.ipam import IpamPolicy, PointToPointPool
from nsm_endpoint.steps import KernelAnswer, PointToPointIpam, PolicyRoutes

log = structlog.get_logger("nsm.endpoint")


class EndpointConfig(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str = Field(min_length=1, max_length=MAX_NAME)
    service: str = Field(min_length=1, max_length=MAX_NAME)
    payload: str = "IP"
    labels: dict[str, str] = Field(default_factory=dict)
    cidrs: list[str] = Field(min_length=1)
    ipam_policy: IpamPolicy = IpamPolicy.POLITE
    policy_routes: list[PolicyRoute] = Field(default_factory=list)  # for the client's side
    listen: Address
    registry: Address  # the node agent (or the registry itself)
    lifetime: float = Field(default=DEFAULT_LIFETIME, gt=0)


class EndpointRuntime:
    """An endpoint: its chain and Monitor service, and its registration kept alive."""

    def __init__(
        self, config: EndpointConfig, transport: Transport = LOCAL_ONLY, registry_id: SpiffeId | None = None
    ) -> None:
        """REGISTRY_ID: what the registry (or agent) at a TCP `config.registry` must prove;
        by default the registry's ID."""
        self.config = config
        self.transport = transport
        self.registry_id = registry_id or transport.registry_id()
        self.pools = [PointToPointPool(c) for c in config.cidrs]
        st = os.stat("/proc/self/ns/net")
        self.begin = Begin()
        # Its own Monitor service: what this endpoint holds, for clients and checks.
        self.events = ConnectionEvents()
        identity = transport.identity
        self.policies = Policies(tokens=identity is not None)
        authorize = Authorize(self.policies, identity, lambda: transport.roles, config.name)
        self.begin.may_touch = authorize.may_touch
        steps: list[Step] = [
            PresentedToken(),
            UpdatePath(config.name, config.lifetime, config.lifetime),
            SignSegment(identity, config.name),
            authorize,
            self.begin,
            Monitor(self.events),
            PointToPointIpam(self.pools, config.ipam_policy),
            PolicyRoutes(config.policy_routes),
            KernelAnswer(st.st_dev, st.st_ino),
        ]
        self.chain = Chain(steps)
        self.registered = asyncio.Event()

    def _record(self) -> NetworkServiceEndpoint:
        c = self.config
        return NetworkServiceEndpoint(
            name=c.name,
            network_service_names=[c.service],
            network_service_labels={c.service: NetworkServiceLabels(labels=with_location(c.labels))},
            url=str(c.listen),
        )

    def _registry_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """Over TLS, this endpoint's path token for the registry (or agent) it registers with."""
        if self.config.registry.scheme != "tcp" or self.registry_id is None:
            return ()
        return call_metadata(self.transport.identity, str(self.registry_id))

    async def _register_loop(self, channel: grpc.aio.Channel) -> None:
        services = registry_pb2_grpc.NetworkServiceRegistryStub(channel)
        endpoints = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)
        while True:
            delay = 1.0
            try:
                existing = [
                    r
                    async for r in services.Find(
                        NetworkServiceQuery(network_service=NetworkService(name=self.config.service)), timeout=5
                    )
                ]
                # Keep what an operator registered (matches); only create a missing service.
                if not any(r.network_service.name == self.config.service for r in existing):
                    await services.Register(
                        NetworkService(name=self.config.service, payload=self.config.payload), timeout=5,
                        metadata=self._registry_metadata(),
                    )  # fmt: skip
                granted = await endpoints.Register(self._record(), timeout=5, metadata=self._registry_metadata())
                left = ts_seconds(granted.expiration_time) - now()
                delay = max(0.2, left / 3)  # renewed at a third of what the registry granted
                if not self.registered.is_set():
                    log.info("endpoint registered", name=granted.name, url=granted.url, expires_in=round(left, 1))
                self.registered.set()
            except grpc.aio.AioRpcError as exc:
                log.warning("registration failed; retrying", error=exc.details(), code=exc.code().name)
            await asyncio.sleep(delay)

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve and stay registered until `stop`; then unregister and stop serving."""
        server = aio_server()
        access = Access(self.transport, allowed=("agent",))  # over TLS: agents only
        networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(NetworkServiceServer(self.chain, access), server)
        connection_pb2_grpc.add_MonitorConnectionServicer_to_server(MonitorService(self.events, access), server)
        bind_all(server, [self.config.listen], self.transport)
        await server.start()
        log.info(
            "endpoint serving",
            name=self.config.name,
            service=self.config.service,
            listen=str(self.config.listen),
            cidrs=self.config.cidrs,
            ipam_policy=self.config.ipam_policy.value,
        )
        channel = self.transport.aio_channel(self.config.registry, self.registry_id)
        registering = asyncio.create_task(self._register_loop(channel))
        try:
            await stop.wait()
        finally:
            registering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await registering
            with contextlib.suppress(grpc.aio.AioRpcError):
                await registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel).Unregister(
                    NetworkServiceEndpoint(name=self.config.name), timeout=3, metadata=self._registry_metadata()
                )
                log.info("endpoint unregistered", name=self.config.name)
            await channel.close(None)
            await server.stop(grace=1.0)
            remove_unix_sockets([self.config.listen])
