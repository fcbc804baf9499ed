"""A Request as an upstream NSM v1 client builds it, from the generated wire stubs only: its
own path segment with `expires` 24 hours ahead, a KERNEL mechanism preference."""

from __future__ import annotations

import time
import uuid

from google.protobuf.timestamp_pb2 import Timestamp

from nsm_api.connection_pb2 import Connection, Mechanism, Path, PathSegment
from nsm_api.networkservice_pb2 import NetworkServiceRequest


def upstream_request(service: str, ifname: str, params: dict[str, str]) -> NetworkServiceRequest:
    cid = str(uuid.uuid4())
    expires = Timestamp(seconds=int(time.time()) + 24 * 3600)
    return NetworkServiceRequest(
        connection=Connection(
            id=cid,
            network_service=service,
            path=Path(index=0, path_segments=[PathSegment(name="upstream-client", id=cid, expires=expires)]),
        ),
        mechanism_preferences=[Mechanism(cls="LOCAL", type="KERNEL", parameters={"name": ifname, **params})],
    )
