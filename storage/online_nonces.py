"""Nonces of online-window applications: each may be used once (replay detection)."""
from __future__ import annotations

import datetime as dt


async def claim(conn, *, nonce: bytes, serial: bytes, procedure: str, issued_at: dt.datetime,
                at: dt.datetime) -> bool:
    """Record a nonce in the caller's transaction; False when it was seen before."""
    row = await conn.fetchval(
        "INSERT INTO online_nonce (nonce, serial, procedure, result, issued_at, seen_at)"
        " VALUES ($1,$2,$3,'pending',$4,$5) ON CONFLICT (nonce) DO NOTHING RETURNING 1",
        nonce, serial, procedure, issued_at, at)
    return row is not None


async def set_result(conn, nonce: bytes, result: str) -> None:
    await conn.execute("UPDATE online_nonce SET result = $2 WHERE nonce = $1", nonce, result)


async def purge(conn, before: dt.datetime) -> int:
    """Forget nonces seen before ``before`` (older applications are refused as stale anyway)."""
    status = await conn.execute("DELETE FROM online_nonce WHERE seen_at < $1", before)
    return int(status.split()[-1])
