"""The audit trail: written in the same transaction as the action it records. No personal data.

The database chains every record as it is inserted (migration 0009: seq, prev_hash, hash, the head in
audit_head); this module also reads the chain back for verification and keeps the signed checkpoints."""
from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

from ca_core.audit import Checkpoint


async def record(conn, *, action: str, client_id: int | None = None, operator_id: str | None = None,
                 serial: bytes | None = None, request_id: str | None = None, details: dict | None = None) -> None:
    await conn.execute(
        "INSERT INTO audit_log (client_id, operator_id, action, serial, request_id, details)"
        " VALUES ($1,$2,$3,$4,$5,$6)", client_id, operator_id, action, serial, request_id, details or {})


# -- reading the chain (the caller reads in one REPEATABLE READ transaction: one snapshot) ------------

async def count(conn) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM audit_log"))


async def head(conn) -> tuple[int, bytes]:
    """The head of the chain: its last seq and hash (seq 0 and 32 zero bytes before the first record)."""
    row = await conn.fetchrow("SELECT seq, hash FROM audit_head")
    return int(row["seq"]), bytes(row["hash"])


async def read_chain(conn, batch: int = 10_000) -> AsyncIterator[list]:
    """Every record in (seq, id) order, in batches, through a server-side cursor (inside the caller's
    transaction). Rows are in ca_core.audit.ChainRecord's field order; details as its jsonb text."""
    cursor = await conn.cursor(
        "SELECT id, seq, at, action, client_id, operator_id, serial, request_id, details::text, prev_hash, hash"
        " FROM audit_log ORDER BY seq, id")
    while True:
        rows = await cursor.fetch(batch)
        if not rows:
            return
        yield rows


async def checkpoints_after(conn, seq: int, limit: int = 10_000) -> list[Checkpoint]:
    """Signed checkpoints with a seq above ``seq``, in seq order, at most ``limit``."""
    rows = await conn.fetch("SELECT seq, hash, signed_at, key_label, signature FROM audit_checkpoint"
                            " WHERE seq > $1 ORDER BY seq LIMIT $2", seq, limit)
    return [Checkpoint(r["seq"], bytes(r["hash"]), r["signed_at"], r["key_label"], bytes(r["signature"]))
            for r in rows]


# -- checkpoints ---------------------------------------------------------------------------------
# One signer of a checkpoint at a time across processes and hosts: a transaction-level advisory lock,
# tried (a process that does not get it skips this round).
_CHECKPOINT_LOCK = 0x5348_4F4D_4549_0003


async def try_checkpoint_lock(conn) -> bool:
    """In the caller's transaction: True when this transaction may sign the next checkpoint."""
    return await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _CHECKPOINT_LOCK)


async def last_checkpoint_seq(conn) -> int:
    return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM audit_checkpoint"))


async def insert_checkpoint(conn, *, seq: int, hash: bytes, signed_at: dt.datetime, key_label: str,
                            signature: bytes) -> None:
    await conn.execute("INSERT INTO audit_checkpoint (seq, hash, signed_at, key_label, signature)"
                       " VALUES ($1, $2, $3, $4, $5)", seq, hash, signed_at, key_label, signature)
