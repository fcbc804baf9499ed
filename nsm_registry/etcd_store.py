"""The etcd store: several registry replicas share one state, and it survives them.

Client: aetcd (asyncio, maintained, works with protobuf 7; the long-popular
`etcd3` package breaks on current protobuf).

Endpoints live under /nsm/endpoints/NAME with an etcd lease one second longer
than their expiration_time: the replicas' own expiry deletes them on time (in
a transaction on the record's revision, so exactly one replica succeeds and
every watcher sees one DELETE), and the lease removes them even when no
replica runs. Records past their expiration_time are never served, whatever
etcd's lease timers do (etcd 3.4 restarts them on a leader change).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

import aetcd
import aetcd.exceptions
import structlog
from aetcd import utils

from nsm_api.registry_pb2 import NetworkService, NetworkServiceEndpoint
from nsm_common.timeutil import now, ts_from, ts_seconds
from nsm_registry.store import EndpointEvent, ServiceEvent

log = structlog.get_logger("nsm.registry")

SERVICES = b"/nsm/services/"
ENDPOINTS = b"/nsm/endpoints/"
RETRY = 0.2


class StoreUnavailable(RuntimeError):
    pass


def parse_etcd_url(url: str) -> list[tuple[str, int]]:
    """`etcd://HOST:PORT[,HOST:PORT...]` → [(host, port), ...]."""
    if not url.startswith("etcd://"):
        raise ValueError(f"{url!r}: expected etcd://HOST:PORT[,HOST:PORT...]")
    out = []
    for part in url.removeprefix("etcd://").split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{url!r}: {part!r} is not HOST:PORT")
        out.append((host.strip("[]"), int(port)))
    return out


class EtcdStore:
    def __init__(self, members: list[tuple[str, int]], timeout: float = 5.0) -> None:
        self.members = members
        self.timeout = timeout
        self._client: aetcd.Client | None = None
        self._next = 0
        self._leases: dict[int, int] = {}  # expiry second -> lease id

    async def _c(self) -> aetcd.Client:
        if self._client is not None:
            return self._client
        errors = []
        for _ in range(len(self.members)):
            host, port = self.members[self._next % len(self.members)]
            self._next += 1
            client = aetcd.Client(host=host, port=port, timeout=math.ceil(self.timeout))
            try:
                await client.connect()
                await client.status()
            except Exception as exc:
                errors.append(f"{host}:{port}: {exc}")
                await client.close()
                continue
            self._client = client
            return client
        raise StoreUnavailable(f"no etcd member answers ({'; '.join(errors)})")

    async def _reset(self) -> None:
        self._leases.clear()  # another member may not know them yet (and a restart forgets them)
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.close()

    async def _do(self, op: Any) -> Any:
        """Run `op(client)`, moving to another member once when this one fails."""
        for attempt in range(2):
            client = await self._c()
            try:
                return await op(client)
            except (aetcd.exceptions.ConnectionFailedError, aetcd.exceptions.ConnectionTimeoutError) as exc:
                await self._reset()
                if attempt:
                    raise StoreUnavailable(str(exc)) from exc
        raise AssertionError("unreachable")

    # Services ---------------------------------------------------------------------
    async def put_service(self, service: NetworkService) -> NetworkService:
        await self._do(lambda c: c.put(SERVICES + service.name.encode(), service.SerializeToString()))
        return NetworkService.FromString(service.SerializeToString())

    async def delete_service(self, name: str) -> bool:
        res = await self._do(lambda c: c.delete(SERVICES + name.encode()))
        return bool(res and res.deleted)

    async def list_services(self) -> list[NetworkService]:
        res = await self._do(lambda c: c.get_prefix(SERVICES))
        return [NetworkService.FromString(kv.value) for kv in res]

    # Endpoints --------------------------------------------------------------------
    async def put_endpoint(self, endpoint: NetworkServiceEndpoint) -> NetworkServiceEndpoint:
        stored = await self.register_endpoint(endpoint, keep_initial=False)
        return stored

    async def register_endpoint(
        self, endpoint: NetworkServiceEndpoint, keep_initial: bool = True
    ) -> NetworkServiceEndpoint:
        """Insert or replace atomically, keeping the first registration time of the name."""
        key = ENDPOINTS + endpoint.name.encode()
        record = _copy(endpoint)
        expires = ts_seconds(record.expiration_time) if record.HasField("expiration_time") else now()

        async def attempt(c: aetcd.Client) -> bool:
            existing = await c.get(key)
            if keep_initial and existing is not None:
                old = NetworkServiceEndpoint.FromString(existing.value)
                if old.HasField("initial_registration_time"):
                    record.initial_registration_time.CopyFrom(old.initial_registration_time)
            lease = await self._lease(c, expires)
            t = c.transactions
            compare = [t.mod(key) == existing.mod_revision] if existing is not None else [t.version(key) == 0]
            ok, _ = await c.transaction(compare, success=[t.put(key, record.SerializeToString(), lease)], failure=[])
            return bool(ok)

        for _ in range(20):  # a concurrent registration of the same name: read again
            if await self._do(attempt):
                return NetworkServiceEndpoint.FromString(record.SerializeToString())
            await asyncio.sleep(0.01)
        raise StoreUnavailable(f"endpoint {endpoint.name!r} keeps changing under us")

    async def get_endpoint(self, name: str) -> NetworkServiceEndpoint | None:
        res = await self._do(lambda c: c.get(ENDPOINTS + name.encode()))
        return NetworkServiceEndpoint.FromString(res.value) if res is not None else None

    async def delete_endpoint(self, name: str) -> bool:
        res = await self._do(lambda c: c.delete(ENDPOINTS + name.encode()))
        return bool(res and res.deleted)

    async def list_endpoints(self) -> list[NetworkServiceEndpoint]:
        res = await self._do(lambda c: c.get_prefix(ENDPOINTS))
        return [NetworkServiceEndpoint.FromString(kv.value) for kv in res]

    async def _lease(self, c: aetcd.Client, expires: float) -> int:
        """A lease ending a second after `expires`, shared by all records ending in the same second.

        One lease per second instead of one per registration: far fewer round trips,
        and etcd is not left with a lease for every refresh ever made.
        """
        bucket = math.ceil(expires) + 1
        lease = self._leases.get(bucket)
        if lease is None:
            for old in [b for b in self._leases if b <= now()]:
                del self._leases[old]
            granted = await c.lease(max(1, math.ceil(bucket - now())))
            lease = self._leases[bucket] = int(granted.id)
        return lease

    # Watches ----------------------------------------------------------------------
    async def _watch(self, prefix: bytes, kind: Any) -> AsyncIterator[Any]:
        res = await self._do(lambda c: c.get_prefix(prefix))
        yield [kind.FromString(kv.value) for kv in res]
        start = res.header.revision + 1
        while True:
            try:
                client = await self._c()
                watch = await client.watch(
                    prefix, range_end=utils.prefix_range_end(prefix), start_revision=start, prev_kv=True
                )
                async for event in watch:
                    # Resume after the last event seen: nothing lost, nothing twice.
                    start = event.kv.mod_revision + 1
                    deleted = event.kind == "DELETE"
                    raw = event.prev_kv.value if deleted and event.prev_kv is not None else event.kv.value
                    record = kind.FromString(raw) if raw else kind(name=event.kv.key[len(prefix) :].decode())
                    yield record, deleted
            except (aetcd.exceptions.ConnectionFailedError, aetcd.exceptions.ConnectionTimeoutError, StoreUnavailable):
                await self._reset()
                await asyncio.sleep(RETRY)
            except aetcd.exceptions.RevisionCompactedError as exc:
                raise StoreUnavailable(f"etcd compacted past revision {start}: find again") from exc

    async def watch_services(self) -> AsyncIterator[list[NetworkService] | ServiceEvent]:
        async for item in self._watch(SERVICES, NetworkService):
            yield item if isinstance(item, list) else ServiceEvent(item[0], deleted=item[1])

    async def watch_endpoints(self) -> AsyncIterator[list[NetworkServiceEndpoint] | EndpointEvent]:
        async for item in self._watch(ENDPOINTS, NetworkServiceEndpoint):
            yield item if isinstance(item, list) else EndpointEvent(item[0], deleted=item[1])

    # Expiry -----------------------------------------------------------------------
    async def expire_endpoints(self, at: float) -> list[NetworkServiceEndpoint]:
        res = await self._do(lambda c: c.get_prefix(ENDPOINTS))
        expired = []
        for kv in res:
            record = NetworkServiceEndpoint.FromString(kv.value)
            if not record.HasField("expiration_time") or ts_seconds(record.expiration_time) > at:
                continue

            async def remove(c: aetcd.Client, key: bytes = kv.key, rev: int = kv.mod_revision) -> bool:
                t = c.transactions
                ok, _ = await c.transaction([t.mod(key) == rev], success=[t.delete(key)], failure=[])
                return bool(ok)

            if await self._do(remove):  # only one replica wins
                expired.append(record)
        return expired

    async def next_expiry(self) -> float | None:
        return None  # polled: another replica may have registered anything

    async def close(self) -> None:
        await self._reset()


def _copy(msg: Any) -> Any:
    out = type(msg)()
    out.CopyFrom(msg)
    return out


__all__ = ["EtcdStore", "StoreUnavailable", "parse_etcd_url", "ts_from"]
