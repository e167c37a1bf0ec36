"""The status channel of one process: a LISTEN connection on which PostgreSQL delivers, in commit
order, a notice for every certificate whose status changed (storage/status_notices.py).

Subscribers (the OCSP responder's memory cache) are told of each changed serial, and of the channel
going up or down (while it is down nothing may be served from memory: notices may be missed).

``sync()`` closes the window between a commit and its notice reaching the other processes: after a
status change has committed, the writer queues a sync notice and waits until every live listener
(every process of every host on this database) has answered it. Since notices arrive in commit order
and are applied in order, an answer means that listener has applied the change; so once the HTTP
answer of a revocation leaves, no process serves an answer from before it (docs/architecture.md).
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Awaitable, Callable

import asyncpg
from prometheus_client import Counter, Histogram

from storage import db, status_notices as notices

log = logging.getLogger(__name__)

LISTENER_UP = Counter("shomei_status_listener_connects_total", "Status listener (re)connections", ["result"])
SYNC_SECONDS = Histogram("shomei_status_sync_seconds", "Time until every live listener applied a status change",
                         buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2))
SYNC_RESULT = Counter("shomei_status_sync_total", "Status syncs by result (ok, timeout, no_listener)", ["result"])

OnSerial = Callable[[str], None]  # the notice payload: hex serial, or '*' for a bulk change
OnState = Callable[[bool], None]  # the channel is up (True: clear what you hold, then use it) or down
StatusSync = Callable[[], Awaitable[bool]]  # what a writer awaits after committing a status change


async def no_sync() -> bool:
    """The status sync of a service built without a channel (tools, tests of one process)."""
    return True


class StatusChannel:
    def __init__(self, database_url: str, pool, *, sync_timeout: float = 2.0):
        self.database_url = database_url
        self.pool = pool
        self.sync_timeout = sync_timeout
        self.pid: int | None = None  # backend pid of the LISTEN connection while it is up
        self._subscribers: list[tuple[OnSerial, OnState]] = []
        self._client_watchers: list[Callable[[], None]] = []
        self._waiting: dict[str, tuple[set[int], asyncio.Future]] = {}
        self._task: asyncio.Task | None = None
        self._users = 0

    def subscribe(self, on_serial: OnSerial, on_state: OnState) -> None:
        self._subscribers.append((on_serial, on_state))
        on_state(self.pid is not None)

    def watch_clients(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` when a client credential is disabled or rotated (in any process)."""
        self._client_watchers.append(on_change)

    def unsubscribe(self, on_serial: OnSerial) -> None:
        self._subscribers = [s for s in self._subscribers if s[0] is not on_serial]

    @property
    def up(self) -> bool:
        return self.pid is not None

    # -- lifecycle: one LISTEN connection however many applications of the process use it -----------
    async def start(self) -> None:
        self._users += 1
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="status-channel")
            for _ in range(250):  # serve with the memory cache as soon as the listener is up
                if self.up:
                    break
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._users -= 1
        if self._users <= 0 and self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def _set_state(self, up: bool) -> None:
        for _on_serial, on_state in list(self._subscribers):
            on_state(up)

    def _on_status(self, _conn, _pid, _channel, payload: str) -> None:
        if payload == notices.CLIENTS_CHANGED:
            for on_change in list(self._client_watchers):
                on_change()
            return
        if payload.startswith(notices.SYNC_PREFIX):
            # Every notice before this one has been applied (call order = arrival order): answer it.
            pid = self.pid
            if pid is not None:
                asyncio.ensure_future(self._ack(payload[len(notices.SYNC_PREFIX):], pid))
            return
        for on_serial, _on_state in list(self._subscribers):
            on_serial(payload)

    async def _ack(self, token: str, pid: int) -> None:
        try:
            async with self.pool.acquire() as conn:
                await notices.send_ack(conn, token, pid)
        except Exception as exc:  # the writer times out and says so
            log.warning("status sync answer failed: %s", type(exc).__name__)

    def _on_ack(self, _conn, _pid, _channel, payload: str) -> None:
        token, _, pid = payload.rpartition(":")
        waiting = self._waiting.get(token)
        if waiting is None or not pid.isdigit():
            return
        expected, fut = waiting
        expected.discard(int(pid))
        if not expected and not fut.done():
            fut.set_result(True)

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.database_url, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c: lost.set())
                await conn.add_listener(notices.STATUS_CHANNEL, self._on_status)
                await conn.add_listener(notices.ACK_CHANNEL, self._on_ack)
                # Named only once it listens: a writer waits for the answer of every named listener.
                await notices.name_listener(conn)
                self.pid = conn.get_server_pid()
                self._set_state(True)  # subscribers clear what they hold: notices may have been missed
                LISTENER_UP.labels("ok").inc()
                backoff = 0.2
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), 5)
                    except asyncio.TimeoutError:
                        await db.ping(conn, timeout=5)  # a silent network loss shows here
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                LISTENER_UP.labels("error").inc()
                log.warning("status listener lost (%s); serving without the memory cache", type(exc).__name__)
            finally:
                self.pid = None
                self._set_state(False)
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    # -- the writer's side ---------------------------------------------------------------------------
    async def sync(self) -> bool:
        """Call after a status change has committed: returns once every live listener has applied it
        (True), or after ``sync_timeout`` (False, counted and logged). Never raises: the change is
        committed whatever happens here."""
        started = time.perf_counter()
        if self.sync_timeout <= 0:
            return True
        if not self.up:
            SYNC_RESULT.labels("no_listener").inc()  # our own answers come from the database meanwhile
            return False
        token = secrets.token_hex(12)
        fut = asyncio.get_running_loop().create_future()
        try:
            async with self.pool.acquire() as conn:
                expected = await notices.live_listeners(conn)
                self._waiting[token] = (expected, fut)
                if not expected:
                    return True
                await notices.send_sync(conn, token)
            await asyncio.wait_for(fut, self.sync_timeout)
        except asyncio.TimeoutError:
            SYNC_RESULT.labels("timeout").inc()
            log.warning("status sync: %d listener(s) did not answer within %.1f s",
                        len(self._waiting.get(token, (set(),))[0]), self.sync_timeout)
            return False
        except Exception as exc:
            SYNC_RESULT.labels("error").inc()
            log.warning("status sync failed: %s", type(exc).__name__)
            return False
        finally:
            self._waiting.pop(token, None)
        SYNC_RESULT.labels("ok").inc()
        SYNC_SECONDS.observe(time.perf_counter() - started)
        return True
