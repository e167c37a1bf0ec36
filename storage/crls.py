"""CRL data: streaming the stored entries, changes since a base, CRL numbers, leases, published CRLs.

Sets are defined by PostgreSQL snapshots, not by clocks (see schemas/migrations/0003_crl.sql): the
entries of a CRL are read inside one REPEATABLE READ transaction, whose snapshot is recorded with
the CRL; a delta lists the changes whose transactions that base snapshot did not see.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

FULL = "full"


def partition_scope(partition: int) -> str:
    return f"p{partition}"


def scope_partition(scope: str) -> int | None:
    return None if scope == FULL else int(scope[1:])


# -- leases --------------------------------------------------------------------------------------
# One publisher per (CA generation, scope) at a time, across processes and machines: a session-level
# advisory lock on the publishing connection. A crashed publisher's connection closes and the lock
# goes with it; the last good CRL stays in place because files are replaced only by rename.
_LEASE_CLASS = 0x43524C00  # "CRL\0"; the generation id is added


def _lease_key(generation_id: int, scope: str) -> tuple[int, int]:
    part = scope_partition(scope)
    return _LEASE_CLASS + generation_id, -1 if part is None else part


async def try_lease(conn, generation_id: int, scope: str) -> bool:
    return await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *_lease_key(generation_id, scope))


async def release_lease(conn, generation_id: int, scope: str) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1, $2)", *_lease_key(generation_id, scope))


# -- numbers -------------------------------------------------------------------------------------

async def allocate_number(conn, generation_id: int, scope: str) -> int:
    """The next CRL number of a scope (shared by its complete CRLs and deltas, RFC 5280 5.2.3);
    committed before use, so numbers never go backwards across restarts or processes."""
    return int(await conn.fetchval(
        "INSERT INTO crl_number (ca_generation_id, scope, last_number) VALUES ($1, $2, 1)"
        " ON CONFLICT (ca_generation_id, scope) DO UPDATE SET last_number = crl_number.last_number + 1"
        " RETURNING last_number", generation_id, scope))


# -- partitions ----------------------------------------------------------------------------------

async def partitions(conn, generation_id: int) -> list[int]:
    """CRL partitions that certificates of this CA generation were assigned to."""
    rows = await conn.fetch("SELECT partition FROM crl_partition WHERE ca_generation_id = $1 ORDER BY partition",
                            generation_id)
    return [r["partition"] for r in rows]


# -- the snapshot and the entries ----------------------------------------------------------------

async def begin_snapshot(conn) -> str:
    """Call first in a REPEATABLE READ transaction: the transaction's snapshot, as text."""
    return await conn.fetchval("SELECT pg_current_snapshot()::text")


def _where(partition: int | None) -> str:
    # Active (not released), effective, not expired at thisUpdate ($2).
    cond = ("ca_generation_id = $1 AND released_at IS NULL AND effective_at IS NOT NULL"
            " AND cert_not_after >= $2")
    return cond + (" AND partition = $3" if partition is not None else "")


async def count_entries(conn, generation_id: int, partition: int | None, this_update: dt.datetime) -> tuple[int, int]:
    """(count, total DER octets) of the entries of a complete CRL, in the current snapshot."""
    args = [generation_id, this_update] + ([partition] if partition is not None else [])
    row = await conn.fetchrow(
        f"SELECT count(*) AS n, coalesce(sum(octet_length(entry_der)), 0) AS size FROM revocation"
        f" WHERE {_where(partition)}", *args)
    return row["n"], int(row["size"])


async def stream_entries(conn, generation_id: int, partition: int | None, this_update: dt.datetime,
                         page_rows: int = 50_000):
    """Yield (count, bytes): the entries of a complete CRL in serial order, ``page_rows`` at a time,
    concatenated by the server (string_agg), so the client does no work per entry. Keyset paging on
    serial; the last serial of a page comes back through lead() (NULL only on a page's last row).
    Call inside the REPEATABLE READ transaction whose snapshot defines the CRL."""
    base_args = [generation_id, this_update] + ([partition] if partition is not None else [])
    n = len(base_args)
    query = (
        "SELECT count(*) AS n, string_agg(entry_der, ''::bytea) AS der,"
        " string_agg(CASE WHEN nxt THEN NULL ELSE serial END, ''::bytea) AS last FROM ("
        "  SELECT entry_der, serial, lead(true) OVER () AS nxt FROM ("
        f"   SELECT entry_der, serial FROM revocation WHERE {_where(partition)} AND serial > ${n + 1}"
        f"   ORDER BY serial LIMIT ${n + 2}) page) page_with_next")
    last = b""
    while True:
        row = await conn.fetchrow(query, *base_args, last, page_rows)
        if not row["n"]:
            return
        yield row["n"], row["der"]
        if row["n"] < page_rows:
            return
        last = row["last"]


@dataclass(frozen=True)
class DeltaChange:
    serial: bytes
    entry_der: bytes | None  # None: removeFromCRL (hold released), dated ``revoked_at``
    revoked_at: dt.datetime


async def changes_since(conn, generation_id: int, partition: int | None, base_snapshot: str,
                        this_update: dt.datetime) -> list[DeltaChange]:
    """What changed since the base (RFC 5280 5.2.4), in serial order: entries in force now whose
    transaction the base snapshot did not see (new revocations, holds, holds turned into
    revocations), and removeFromCRL for holds the base listed that have since been released and not
    replaced. Call inside the REPEATABLE READ transaction of the delta."""
    args = [generation_id, this_update, base_snapshot] + ([partition] if partition is not None else [])
    part = " AND partition = $4" if partition is not None else ""
    rows = await conn.fetch(
        "WITH base AS (SELECT $3::text::pg_snapshot AS s),"
        " added AS ("
        "  SELECT serial, entry_der, revoked_at FROM revocation, base"
        "  WHERE ca_generation_id = $1 AND effective_xid >= pg_snapshot_xmin(base.s)"
        "  AND NOT pg_visible_in_snapshot(effective_xid, base.s)"
        f"  AND released_at IS NULL AND cert_not_after >= $2{part}),"
        " removed AS ("
        "  SELECT DISTINCT ON (serial) serial, NULL::bytea AS entry_der, revoked_at FROM revocation, base"
        "  WHERE ca_generation_id = $1 AND release_kind = 'hold_released'"
        "  AND released_xid >= pg_snapshot_xmin(base.s) AND NOT pg_visible_in_snapshot(released_xid, base.s)"
        # effective_xid NULL: made effective before change tracking existed, so in every base.
        f"  AND (effective_xid IS NULL OR pg_visible_in_snapshot(effective_xid, base.s)){part}"
        "  AND serial NOT IN (SELECT serial FROM added)"
        "  ORDER BY serial, revoked_at)"
        " SELECT * FROM added UNION ALL SELECT * FROM removed ORDER BY serial", *args)
    return [DeltaChange(bytes(r["serial"]), bytes(r["entry_der"]) if r["entry_der"] is not None else None,
                        r["revoked_at"]) for r in rows]


# -- published CRLs ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PublishedCRL:
    id: int
    ca_generation_id: int
    scope: str
    kind: str  # base | delta
    number: int
    base_id: int | None
    this_update: dt.datetime
    next_update: dt.datetime
    snapshot: str
    entries: int
    bytes: int
    sha256: bytes
    path: str


_COLS = ("id, ca_generation_id, scope, kind, crl_number, base_id, this_update, next_update, snapshot::text AS snap,"
         " entries, bytes, sha256, path")


def _published(r) -> PublishedCRL:
    return PublishedCRL(r["id"], r["ca_generation_id"], r["scope"], r["kind"], int(r["crl_number"]), r["base_id"],
                        r["this_update"], r["next_update"], r["snap"], r["entries"], r["bytes"],
                        bytes(r["sha256"]), r["path"])


async def record_published(conn, *, generation_id: int, scope: str, kind: str, number: int, base_id: int | None,
                           this_update: dt.datetime, next_update: dt.datetime, snapshot: str, entries: int,
                           size: int, sha256: bytes, path: str) -> int:
    return await conn.fetchval(
        "INSERT INTO crl (ca_generation_id, scope, kind, crl_number, base_id, this_update, next_update, snapshot,"
        " entries, bytes, sha256, path) VALUES ($1,$2,$3,$4,$5,$6,$7,$8::text::pg_snapshot,$9,$10,$11,$12)"
        " RETURNING id", generation_id, scope, kind, number, base_id, this_update, next_update, snapshot,
        entries, size, sha256, path)


async def latest(conn, generation_id: int, scope: str, kind: str | None = None) -> PublishedCRL | None:
    """The newest published CRL of a scope (of one kind, or of either)."""
    if kind is None:
        row = await conn.fetchrow(f"SELECT {_COLS} FROM crl WHERE ca_generation_id = $1 AND scope = $2"
                                  " ORDER BY crl_number DESC LIMIT 1", generation_id, scope)
    else:
        row = await conn.fetchrow(f"SELECT {_COLS} FROM crl WHERE ca_generation_id = $1 AND scope = $2 AND kind = $3"
                                  " ORDER BY crl_number DESC LIMIT 1", generation_id, scope, kind)
    return _published(row) if row else None


async def latest_by_scope(conn, generation_id: int) -> dict[tuple[str, str], PublishedCRL]:
    """The newest CRL of each (scope, kind) of a CA generation (the scheduler's view)."""
    rows = await conn.fetch(f"SELECT DISTINCT ON (scope, kind) {_COLS} FROM crl WHERE ca_generation_id = $1"
                            " ORDER BY scope, kind, crl_number DESC", generation_id)
    return {(r["scope"], r["kind"]): _published(r) for r in rows}
