"""A registry client for tests: both registry services over one channel, and a watch as a queue."""

from __future__ import annotations

import queue
import threading

import grpc

from nsm_api import registry_pb2_grpc
from nsm_api.registry_pb2 import NetworkServiceEndpoint, NetworkServiceEndpointQuery, NetworkServiceEndpointResponse
from nsm_common.identity.transport import LOCAL_ONLY
from nsm_common.urls import parse_address


class Registry:
    def __init__(self, url: str) -> None:
        self.channel = LOCAL_ONLY.sync_channel(parse_address(url))
        self.ns = registry_pb2_grpc.NetworkServiceRegistryStub(self.channel)
        self.nse = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(self.channel)

    def endpoints(self, query: NetworkServiceEndpoint | None = None) -> list[NetworkServiceEndpoint]:
        q = NetworkServiceEndpointQuery(network_service_endpoint=query or NetworkServiceEndpoint())
        return [r.network_service_endpoint for r in self.nse.Find(q, timeout=5)]

    def watch(
        self, query: NetworkServiceEndpoint | None = None
    ) -> tuple[queue.Queue[NetworkServiceEndpointResponse], grpc.CallIterator[NetworkServiceEndpointResponse]]:
        q: queue.Queue[NetworkServiceEndpointResponse] = queue.Queue()
        stream = self.nse.Find(
            NetworkServiceEndpointQuery(network_service_endpoint=query or NetworkServiceEndpoint(), watch=True)
        )

        def pump() -> None:
            try:
                for resp in stream:
                    q.put(resp)
            except grpc.RpcError:
                pass

        threading.Thread(target=pump, daemon=True).start()
        return q, stream
