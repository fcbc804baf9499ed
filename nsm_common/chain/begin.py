"""One connection per id: refresh in place, reselect, Close of the unknown, expiry.

Requests and Closes on one id run one at a time. A Request on a known id is a
refresh or an update of that connection, never a second one. A connection whose
caller stops refreshing is closed by this hop when the caller's segment expires.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
import structlog

from nsm_api.connection_pb2 import RESELECT_REQUESTED, UP, Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Call, Next, Step
from nsm_common.errors import NsmError
from nsm_common.timeutil import now, ts_seconds

log = structlog.get_logger("nsm.chain")


@dataclass
class _Record:
    conn_wire: bytes  # the last reply, at this hop's index; serialized, a fifth of the parsed size
    caller_id: str
    nxt: Next
    timer: asyncio.TimerHandle | None = None

    @property
    def conn(self) -> Connection:
        """A fresh copy of the last reply."""
        return Connection.FromString(self.conn_wire)


@dataclass
class _Held:
    lock: asyncio.Lock
    users: int = 0


def _expires(conn: Connection) -> float:
    segments = conn.path.path_segments
    index = conn.path.index
    seg = segments[index - 1] if index > 0 else segments[index]
    return ts_seconds(seg.expires)


class Begin(Step):
    """One Request or Close per id at a time; refresh, reselect and expiry.

    Reads: `call.replay` (a restart carrying the connection on); asks `may_touch` before a
    refresh or Close of a connection it holds. Provides: `call.refresh`
    (this id is known), `call.avoid` (the endpoint a reselect moves away from).
    """

    def __init__(
        self,
        on_unknown_close: Callable[[Connection], Awaitable[None]] | None = None,
        held_elsewhere: Callable[[str], bool] | None = None,
        may_touch: Callable[[Connection, Call, str], None] | None = None,
    ) -> None:
        # Called for a Close of an id this hop holds no record of: after a
        # restart, a connection may live only in the journal for a while.
        self.on_unknown_close = on_unknown_close
        # Whether an id this hop has no record of is still a connection of its (the journal's,
        # after a restart): a failed Request of it must not undo it.
        self.held_elsewhere = held_elsewhere or (lambda conn_id: False)
        self._records: dict[str, _Record] = {}
        self._by_caller: dict[str, str] = {}
        self._locks: dict[str, _Held] = {}
        self._expiring: set[asyncio.Task[None]] = set()
        # Ids this hop is carrying on after a restart: others wait their turn.
        self._restoring: dict[str, asyncio.Event] = {}
        self._wanted: Callable[[str], None] | None = None
        # Whether this call may refresh or close the connection this hop holds (raises when
        # not): asked under the id's lock, after a restart has carried the connection on.
        self.may_touch = may_touch

    def hold(self, conn_ids: list[str], wanted: Callable[[str], None] | None = None) -> None:
        """Until `release`, Requests and Closes of these ids wait (the journal replays them first);
        `wanted(id)` is told when one arrives, so that its replay can go first."""
        for cid in conn_ids:
            self._restoring.setdefault(cid, asyncio.Event())
        if wanted is not None:
            self._wanted = wanted

    def release(self, conn_id: str) -> None:
        """Let the Requests and Closes of `conn_id` that wait on `hold` go on."""
        event = self._restoring.pop(conn_id, None)
        if event is not None:
            event.set()

    async def _wait_restored(self, conn_id: str, call: Call) -> None:
        event = self._restoring.get(conn_id)
        if event is not None and call.replay is None:
            if self._wanted is not None:
                self._wanted(conn_id)
            await event.wait()

    @contextlib.asynccontextmanager
    async def _lock(self, conn_id: str) -> AsyncIterator[None]:
        """One Request or Close of an id at a time; the lock goes once nobody holds or awaits it
        (a failed Request or a Close leaves nothing behind, and nobody gets a second lock)."""
        held = self._locks.get(conn_id)
        if held is None:
            held = self._locks[conn_id] = _Held(asyncio.Lock())
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:
            held.users -= 1
            if not held.users:
                del self._locks[conn_id]

    def _forget(self, conn_id: str) -> _Record | None:
        rec = self._records.pop(conn_id, None)
        if rec is not None:
            if rec.timer is not None:
                rec.timer.cancel()
            self._by_caller.pop(rec.caller_id, None)
        return rec

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        conn = request.connection
        own = conn.id
        await self._wait_restored(own, call)
        async with self._lock(own):
            if call.replay is not None and not call.replay():
                raise NsmError(grpc.StatusCode.CANCELLED, "closed while the agent was restarting")
            rec = self._records.get(own)
            if rec is not None and self.may_touch is not None and call.replay is None:
                self.may_touch(rec.conn, call, "networkservice.request")
            if rec is not None and conn.state == RESELECT_REQUESTED:
                log.info("reselect requested", id=own, old_endpoint=rec.conn.network_service_endpoint_name)
                self._forget(own)
                call.avoid.add(rec.conn.network_service_endpoint_name)
                await rec.nxt.close(rec.conn, Call(reselecting=True))
                rec = None
            if conn.state == RESELECT_REQUESTED:
                conn.network_service_endpoint_name = ""
                conn.ClearField("mechanism")
                # The old path beyond this hop goes, and what this hop noted of it (its tunnel).
                segments = conn.path.path_segments
                del segments[conn.path.index + 1 :]
                if conn.path.index < len(segments):
                    segments[conn.path.index].metrics.clear()
            conn.state = UP
            call.refresh = rec is not None
            if rec is not None and not conn.network_service_endpoint_name:
                conn.network_service_endpoint_name = rec.conn.network_service_endpoint_name
            fresh = rec is None and call.replay is None and not self.held_elsewhere(own)
            caller_id = conn.path.path_segments[conn.path.index - 1].id if conn.path.index > 0 else own
            if rec is None:
                # A Close by the caller's id (it gave up waiting) finds this Request, and
                # waits for it, so that what it builds is closed and not left behind.
                self._by_caller[caller_id] = own
            try:
                reply = await nxt.request(request, call)
            except BaseException:
                if rec is None and self._by_caller.get(caller_id) == own:
                    del self._by_caller[caller_id]
                if fresh:
                    await self._undo(request.connection, nxt)
                raise
            reply.state = UP
            if rec is not None and rec.timer is not None:
                rec.timer.cancel()
            new = _Record(conn_wire=reply.SerializeToString(), caller_id=caller_id, nxt=nxt)
            self._records[own] = new
            self._by_caller[caller_id] = own
            self._schedule_expiry(own, new)
            return reply

    async def _undo(self, conn: Connection, nxt: Next) -> None:
        """A new connection failed. Each step undid its own work, unless the failure came after
        it, on the way out; a Close through the steps below undoes that too. Steps close only
        what they hold, so when all is undone already it costs nothing."""
        gone = Connection()
        gone.CopyFrom(conn)
        try:
            await nxt.close(gone, Call())
        except Exception as exc:  # the failure that got here is the one the caller should see
            log.warning("undoing a failed request", id=conn.id, error=str(exc))

    def _schedule_expiry(self, own: str, rec: _Record) -> None:
        delay = max(0.0, _expires(rec.conn) - now())
        loop = asyncio.get_running_loop()
        rec.timer = loop.call_later(delay, self._start_expiry, own, rec)

    def _start_expiry(self, own: str, rec: _Record) -> None:
        task = asyncio.get_running_loop().create_task(self._expire(own, rec))
        self._expiring.add(task)
        task.add_done_callback(self._expiring.discard)

    async def _expire(self, own: str, rec: _Record) -> None:
        async with self._lock(own):
            if self._records.get(own) is not rec:
                return  # refreshed or closed meanwhile
            log.info("connection expired: its client stopped refreshing", id=own)
            self._forget(own)
            try:
                await rec.nxt.close(rec.conn, Call())
            except Exception as exc:
                log.warning("closing an expired connection failed", id=own, error=str(exc))

    async def close_now(self, conn_id: str, why: str) -> bool:
        """Close a connection this hop holds, of its own accord (its client's pod is gone);
        False when it holds none by that id."""
        async with self._lock(conn_id):
            rec = self._forget(conn_id)
            if rec is None:
                return False
            log.info("closing a connection", id=conn_id, why=why)
            await rec.nxt.close(rec.conn, Call())
            return True

    def held(self, conn_id: str) -> Connection | None:
        """The last reply of the connection this hop holds by its own id or its caller's."""
        rec = self._records.get(conn_id) or self._records.get(self._by_caller.get(conn_id, ""))
        return rec.conn if rec is not None else None

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        own = conn.id
        if own not in self._records and own in self._by_caller:
            own = self._by_caller[own]
        await self._wait_restored(own, call)
        async with self._lock(own):
            held = self._records.get(own)
            if held is not None and self.may_touch is not None:
                self.may_touch(held.conn, call, "networkservice.close")
            rec = self._forget(own)
            if rec is None:
                if self.on_unknown_close is not None:
                    await self.on_unknown_close(conn)
                return  # Close of an unknown id succeeds
            await nxt.close(rec.conn, call)
