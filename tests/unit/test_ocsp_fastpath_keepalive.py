"""The OCSP fast path's keep-alive timer (one per connection, not one per request): an idle connection is
closed once it has been idle for the keep-alive time, counted from its last answer, and never while an
answer is in progress."""
from __future__ import annotations

import asyncio

from ocsp_responder.fastpath import FastPath

KEEPALIVE = 0.2


class _Transport:
    def __init__(self):
        self.closed_at = None

    def get_extra_info(self, name):
        return ("127.0.0.1", 4000) if name == "peername" else None

    def close(self):
        if self.closed_at is None:
            self.closed_at = asyncio.get_running_loop().time()


def _connect() -> tuple[FastPath, _Transport]:
    conn = FastPath(svc=None, fallback=None, conns=set(), keepalive=KEEPALIVE)
    transport = _Transport()
    conn.connection_made(transport)
    return conn, transport


async def test_an_idle_connection_is_closed_after_the_keepalive_time():
    loop = asyncio.get_running_loop()
    start = loop.time()
    conn, transport = _connect()
    await asyncio.sleep(KEEPALIVE / 2)
    assert transport.closed_at is None
    await asyncio.sleep(KEEPALIVE)
    assert transport.closed_at is not None and transport.closed_at - start >= KEEPALIVE * 0.9
    conn.connection_lost(None)


async def test_the_idle_time_counts_from_the_last_answer():
    loop = asyncio.get_running_loop()
    conn, transport = _connect()
    await asyncio.sleep(KEEPALIVE * 0.6)
    conn.last_active = answered = loop.time()  # what an answer does
    await asyncio.sleep(KEEPALIVE * 0.6)  # the first timer has fired by now
    assert transport.closed_at is None
    await asyncio.sleep(KEEPALIVE)
    assert transport.closed_at is not None and transport.closed_at - answered >= KEEPALIVE * 0.9
    conn.connection_lost(None)


async def test_a_connection_is_not_closed_while_an_answer_is_in_progress():
    loop = asyncio.get_running_loop()
    conn, transport = _connect()
    conn.busy = True  # e.g. waiting for the token
    await asyncio.sleep(KEEPALIVE * 2.5)
    assert transport.closed_at is None
    conn.busy, conn.last_active = False, loop.time()
    done = conn.last_active
    await asyncio.sleep(KEEPALIVE * 2)
    assert transport.closed_at is not None and transport.closed_at - done >= KEEPALIVE * 0.9
    conn.connection_lost(None)


async def test_a_lost_connection_leaves_no_timer():
    conn, transport = _connect()
    conn.connection_lost(None)
    assert conn.idle is None
    await asyncio.sleep(KEEPALIVE * 1.5)
    assert transport.closed_at is None
