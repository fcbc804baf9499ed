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
from nsm_common.timeutil import now, ts_seconds
from nsm_registry.hub import Hub, watch_hub
from nsm_registry.store import Check, EndpointEvent, ServiceEvent, StoreUnavailable

log = structlog.get_logger("nsm.registry")

SERVICES = b"/nsm/services/"
ENDPOINTS = b"/nsm/endpoints/"
RETRY = 0.2


class _Mirror:
    """This replica's copy of one prefix, kept by one etcd watch.

    Lists, lookups and every Find watcher are served from here: one etcd watch
    per replica instead of one per client, and a snapshot costs no round trip.
    Writes wait until the mirror has seen them, so a replica reads its own writes.
    """

    def __init__(self, store: EtcdStore, prefix: bytes, kind: Any, make_event: Any) -> None:
        self.store = store
        self.prefix = prefix
        self.kind = kind
        self.make_event = make_event
        self.records: dict[bytes, tuple[Any, int]] = {}  # key -> (record, mod_revision)
        self.revision = 0
        self.hub = Hub()
        self.ready = asyncio.Event()
        self._progress = asyncio.Condition()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def wait_ready(self) -> None:
        self.start()
        try:
            await asyncio.wait_for(self.ready.wait(), timeout=self.store.timeout)
        except TimeoutError as exc:
            raise StoreUnavailable("etcd did not answer in time") from exc

    async def seen(self, revision: int) -> None:
        """Until the mirror has applied `revision`."""
        try:
            async with self._progress:
                await asyncio.wait_for(self._progress.wait_for(lambda: self.revision >= revision), self.store.timeout)
        except TimeoutError as exc:
            raise StoreUnavailable("etcd's watch fell behind a write") from exc

    async def _advance(self, revision: int) -> None:
        async with self._progress:
            self.revision = max(self.revision, revision)
            self._progress.notify_all()

    async def _load(self) -> None:
        res = await self.store._do(lambda c: c.get_prefix(self.prefix))
        fresh = {kv.key: (self.kind.FromString(kv.value), kv.mod_revision) for kv in res}
        if self.ready.is_set():  # a re-list after a gap: tell watchers what changed
            for key, (record, _) in self.records.items():
                if key not in fresh:
                    self.hub.publish(self.make_event(record, True))
            for key, (record, rev) in fresh.items():
                if self.records.get(key, (None, 0))[1] != rev:
                    self.hub.publish(self.make_event(record, False))
        self.records = fresh
        await self._advance(res.header.revision)
        self.ready.set()

    async def _run(self) -> None:
        while True:
            try:
                if not self.ready.is_set():
                    await self._load()
                client = await self.store._c()
                watch = await client.watch(
                    self.prefix,
                    range_end=utils.prefix_range_end(self.prefix),
                    start_revision=self.revision + 1,
                    prev_kv=True,
                )
                async for event in watch:
                    # Resumed after the last revision applied: nothing lost, nothing twice.
                    key, rev = event.kv.key, event.kv.mod_revision
                    if event.kind == "DELETE":
                        old = self.records.pop(key, None)
                        record = old[0] if old else self.kind(name=key[len(self.prefix) :].decode())
                        self.hub.publish(self.make_event(record, True))
                    else:
                        record = self.kind.FromString(event.kv.value)
                        self.records[key] = (record, rev)
                        self.hub.publish(self.make_event(record, False))
                    await self._advance(rev)
            except asyncio.CancelledError:
                raise
            except aetcd.exceptions.RevisionCompactedError:
                await self._load()  # re-list, and tell watchers the difference
            except Exception as exc:
                log.warning("etcd watch broke; resuming", prefix=self.prefix.decode(), error=str(exc))
                await self.store._reset()
                await asyncio.sleep(RETRY)

    def values(self) -> list[Any]:
        return [record for record, _ in self.records.values()]


class EtcdStore:
    def __init__(self, members: list[tuple[str, int]], timeout: float = 5.0) -> None:
        self.members = members
        self.timeout = timeout
        self._client: aetcd.Client | None = None
        self._next = 0
        self._leases: dict[int, int] = {}  # expiry second -> lease id
        self._services = _Mirror(self, SERVICES, NetworkService, ServiceEvent)
        self._endpoints = _Mirror(self, ENDPOINTS, NetworkServiceEndpoint, EndpointEvent)

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
    async def put_service(self, service: NetworkService, check: Check | None = None) -> NetworkService:
        await self._services.wait_ready()
        key = SERVICES + service.name.encode()
        if check is None:
            res = await self._do(lambda c: c.put(key, service.SerializeToString()))
            await self._services.seen(res.header.revision)
            return NetworkService.FromString(service.SerializeToString())
        written: list[int] = []

        async def attempt(c: aetcd.Client) -> bool:
            existing = await c.get(key)
            check(NetworkService.FromString(existing.value) if existing is not None else None)
            t = c.transactions
            compare = [t.mod(key) == existing.mod_revision] if existing is not None else [t.version(key) == 0]
            ok, responses = await c.transaction(compare, success=[t.put(key, service.SerializeToString())], failure=[])
            if ok:
                written.append(responses[0].response_put.header.revision)
            return bool(ok)

        await self._retry(attempt, f"service {service.name!r}")
        await self._services.seen(written[-1])
        return NetworkService.FromString(service.SerializeToString())

    async def delete_service(self, name: str, check: Check | None = None) -> bool:
        return await self._delete(self._services, name, check)

    async def _retry(self, attempt: Any, what: str) -> None:
        """Run a read-then-transaction ATTEMPT until no concurrent write got in between."""
        for _ in range(20):
            if await self._do(attempt):
                return
            await asyncio.sleep(0.01)
        raise StoreUnavailable(f"{what} keeps changing under us")

    # Endpoints --------------------------------------------------------------------
    async def register_endpoint(
        self, endpoint: NetworkServiceEndpoint, check: Check | None = None
    ) -> NetworkServiceEndpoint:
        """Insert or replace atomically, keeping the first registration time of the name."""
        key = ENDPOINTS + endpoint.name.encode()
        record = _copy(endpoint)
        expires = ts_seconds(record.expiration_time) if record.HasField("expiration_time") else now()

        written: list[int] = []
        await self._endpoints.wait_ready()

        async def attempt(c: aetcd.Client) -> bool:
            existing = await c.get(key)
            old = NetworkServiceEndpoint.FromString(existing.value) if existing is not None else None
            if check is not None:
                check(old)
            if old is not None and old.HasField("initial_registration_time"):
                record.initial_registration_time.CopyFrom(old.initial_registration_time)
            lease = await self._lease(c, expires)
            t = c.transactions
            compare = [t.mod(key) == existing.mod_revision] if existing is not None else [t.version(key) == 0]
            ok, responses = await c.transaction(
                compare, success=[t.put(key, record.SerializeToString(), lease)], failure=[]
            )
            if ok:
                written.append(responses[0].response_put.header.revision)
            return bool(ok)

        await self._retry(attempt, f"endpoint {endpoint.name!r}")  # a concurrent registration: read again
        await self._endpoints.seen(written[-1])
        return NetworkServiceEndpoint.FromString(record.SerializeToString())

    async def get_endpoint(self, name: str) -> NetworkServiceEndpoint | None:
        await self._endpoints.wait_ready()
        found = self._endpoints.records.get(ENDPOINTS + name.encode())
        return _copy(found[0]) if found is not None else None

    async def delete_endpoint(self, name: str, check: Check | None = None) -> bool:
        return await self._delete(self._endpoints, name, check)

    async def _delete(self, mirror: _Mirror, name: str, check: Check | None = None) -> bool:
        """Delete a record (CHECK first, on the record as it is: a transaction on its revision)
        and wait until this replica's mirror has seen it gone."""
        await mirror.wait_ready()
        key = mirror.prefix + name.encode()
        if check is None:
            res = await self._do(lambda c: c.delete(key))
            if res is not None:
                await mirror.seen(res.header.revision)
            return bool(res and res.deleted)
        outcome: list[tuple[bool, int]] = []

        async def attempt(c: aetcd.Client) -> bool:
            existing = await c.get(key)
            check(mirror.kind.FromString(existing.value) if existing is not None else None)
            if existing is None:
                outcome.append((False, 0))
                return True
            t = c.transactions
            ok, responses = await c.transaction([t.mod(key) == existing.mod_revision], success=[t.delete(key)],
                                                failure=[])  # fmt: skip
            if ok:
                outcome.append((True, responses[0].response_delete_range.header.revision))
            return bool(ok)

        await self._retry(attempt, f"{name!r}")
        deleted, revision = outcome[-1]
        if deleted:
            await mirror.seen(revision)
        return deleted

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
    async def watch_services(self) -> AsyncIterator[list[NetworkService] | ServiceEvent]:
        await self._services.wait_ready()
        async for item in watch_hub(self._services.hub, self._services.values()):
            yield item  # type: ignore[misc]

    async def watch_endpoints(self) -> AsyncIterator[list[NetworkServiceEndpoint] | EndpointEvent]:
        await self._endpoints.wait_ready()
        async for item in watch_hub(self._endpoints.hub, self._endpoints.values()):
            yield item  # type: ignore[misc]

    # Expiry -----------------------------------------------------------------------
    async def expire_endpoints(self, at: float) -> list[NetworkServiceEndpoint]:
        await self._endpoints.wait_ready()
        expired = []
        for key, (record, revision) in list(self._endpoints.records.items()):
            if not record.HasField("expiration_time") or ts_seconds(record.expiration_time) > at:
                continue

            async def remove(c: aetcd.Client, key: bytes = key, rev: int = revision) -> bool:
                t = c.transactions
                ok, _ = await c.transaction([t.mod(key) == rev], success=[t.delete(key)], failure=[])
                return bool(ok)

            if await self._do(remove):  # only one replica wins
                expired.append(record)
        return expired

    async def next_expiry(self) -> float | None:
        return None  # polled: another replica may have registered anything

    async def close(self) -> None:
        for mirror in (self._services, self._endpoints):
            if mirror.task is not None:
                mirror.task.cancel()
            mirror.hub.publish(ConnectionAbortedError("registry store closed"))
        await self._reset()


def _copy(msg: Any) -> Any:
    out = type(msg)()
    out.CopyFrom(msg)
    return out
