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


async def estimated_revocations(conn) -> int:
    """The planner's estimate of the revocation table's rows (an upper bound to size pages by)."""
    return int(await conn.fetchval("SELECT greatest(reltuples, 0) FROM pg_class WHERE relname = 'revocation'"))


# -- the snapshot and the entries ----------------------------------------------------------------

async def begin_snapshot(conn) -> str:
    """Call first in a REPEATABLE READ transaction: the transaction's snapshot, as text."""
    return await conn.fetchval("SELECT pg_current_snapshot()::text")


def _where(partition: int | None) -> str:
    # Active (not released), effective, not expired at thisUpdate ($2).
    cond = ("ca_generation_id = $1 AND released_at IS NULL AND effective_at IS NOT NULL"
            " AND cert_not_after >= $2")
    return cond + (" AND partition = $3" if partition is not None else "")


async def export_snapshot(conn) -> str:
    """Export the transaction's snapshot so that more connections read the same set."""
    return await conn.fetchval("SELECT pg_export_snapshot()")


async def join_snapshot(conn, snapshot_id: str) -> None:
    """First statement of a REPEATABLE READ transaction: adopt an exported snapshot."""
    await conn.execute(f"SET TRANSACTION SNAPSHOT '{_snapshot_id(snapshot_id)}'")


def _snapshot_id(value: str) -> str:
    if not value.replace("-", "").isalnum():
        raise ValueError("not a snapshot id")
    return value


# Serials are 16 random octets (ca_core.serials), so equal slices of the serial space hold about
# equal numbers of entries: the stream is cut into serial ranges, each concatenated by the server.
_SERIAL_SPACE = 1 << 127
_ABOVE_ALL = b"\xff" * 21  # above every serial (RFC 5280 4.1.2.2: at most 20 octets)


def serial_ranges(pages: int) -> list[tuple[bytes, bytes]]:
    """``pages`` consecutive [low, high) ranges of stored serials covering every possible value."""
    pages = max(1, pages)
    bounds = [b""] + [(_SERIAL_SPACE * i // pages).to_bytes(16, "big") for i in range(1, pages)] + [_ABOVE_ALL]
    return list(zip(bounds[:-1], bounds[1:]))


async def entry_page(conn, generation_id: int, partition: int | None, this_update: dt.datetime,
                     low: bytes, high: bytes) -> tuple[int, bytes]:
    """(count, concatenated DER) of the entries of a complete CRL with serials in [low, high), in
    serial order; the server concatenates (string_agg over the ordered index-only scan), so the
    client does no work per entry. Call inside the REPEATABLE READ transaction of the CRL."""
    args = [generation_id, this_update] + ([partition] if partition is not None else [])
    n = len(args)
    row = await conn.fetchrow(
        "SELECT count(*) AS n, string_agg(entry_der, ''::bytea) AS der FROM ("
        f" SELECT entry_der FROM revocation WHERE {_where(partition)} AND serial >= ${n + 1} AND serial < ${n + 2}"
        " ORDER BY serial) page", *args, low, high)
    return row["n"], (row["der"] or b"")


def _delta_scope(base_snapshot: str, partition: int | None) -> tuple[str, str, list]:
    # xmin of the base snapshot as a parameter: the xid indexes then scan only the changes since
    # (every transaction the base did not see has an xid >= its xmin).
    xmin = base_snapshot.split(":", 1)[0]
    if partition is None:
        return xmin, "", []
    return xmin, " AND partition = $5", [partition]


async def released_since(conn, generation_id: int, partition: int | None, base_snapshot: str,
                         this_update: dt.datetime) -> list[tuple[bytes, dt.datetime]]:
    """(serial, revocation date of the hold) of the holds the base listed that have since been released
    and are not in force again: a delta lists them as removeFromCRL (RFC 5280 5.2.4). Call inside the
    REPEATABLE READ transaction of the delta."""
    xmin, part, extra = _delta_scope(base_snapshot, partition)
    rows = await conn.fetch(
        "SELECT DISTINCT ON (serial) serial, revoked_at FROM revocation r"
        " WHERE ca_generation_id = $1 AND release_kind = 'hold_released' AND released_xid >= $4::text::xid8"
        " AND NOT pg_visible_in_snapshot(released_xid, $3::text::pg_snapshot)"
        # effective_xid NULL: made effective before change tracking existed, so in every base.
        " AND (effective_xid IS NULL OR pg_visible_in_snapshot(effective_xid, $3::text::pg_snapshot))"
        " AND NOT EXISTS (SELECT 1 FROM revocation a WHERE a.certificate_id = r.certificate_id"
        "  AND a.released_at IS NULL AND a.effective_at IS NOT NULL AND a.cert_not_after >= $2)"
        f"{part} ORDER BY serial, revoked_at",
        generation_id, this_update, base_snapshot, xmin, *extra)
    return [(bytes(r["serial"]), r["revoked_at"]) for r in rows]


async def delta_entries(conn, generation_id: int, partition: int | None, base_snapshot: str,
                        this_update: dt.datetime, removes: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """(count, concatenated DER in serial order) of a delta CRL: the entries in force now whose
    transaction the base snapshot did not see (new revocations, holds, holds turned into revocations),
    merged with ``removes`` ((serial, removeFromCRL entry DER), from released_since). Call inside the
    REPEATABLE READ transaction of the delta."""
    xmin, part, extra = _delta_scope(base_snapshot, partition)
    n = 7 if partition is not None else 6
    row = await conn.fetchrow(
        "SELECT count(*) AS n, string_agg(der, ''::bytea) AS der FROM ("
        " SELECT serial, entry_der AS der FROM revocation"
        " WHERE ca_generation_id = $1 AND effective_xid >= $4::text::xid8"
        " AND NOT pg_visible_in_snapshot(effective_xid, $3::text::pg_snapshot)"
        f" AND released_at IS NULL AND cert_not_after >= $2{part}"
        f" UNION ALL SELECT s, d FROM unnest(${n - 1}::bytea[], ${n}::bytea[]) AS u(s, d)"
        " ORDER BY serial) changes",
        generation_id, this_update, base_snapshot, xmin, *extra, [s for s, _ in removes], [d for _, d in removes])
    return row["n"], (row["der"] or b"")


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


async def new_crl_id(conn) -> int:
    """An id for a CRL about to be recorded (its content parts are written before its row)."""
    return await conn.fetchval("SELECT nextval(pg_get_serial_sequence('crl', 'id'))")


async def add_content(conn, crl_id: int, part: int, data: bytes) -> None:
    """One part of a CRL's bytes, in the transaction that records the CRL (migration 0015)."""
    await conn.execute("INSERT INTO crl_content (crl_id, part, data) VALUES ($1, $2, $3)", crl_id, part, data)


async def record_published(conn, *, generation_id: int, scope: str, kind: str, number: int, base_id: int | None,
                           this_update: dt.datetime, next_update: dt.datetime, snapshot: str, entries: int,
                           size: int, sha256: bytes, path: str, crl_id: int | None = None) -> int:
    """Record a CRL (with ``crl_id`` from new_crl_id when its content was added in this transaction) and
    drop the content of this path's CRLs older than the one it replaces. The commit that follows is
    the publication: it is durable (synchronous), since every host serves what it says."""
    rid = await conn.fetchval(
        "INSERT INTO crl (id, ca_generation_id, scope, kind, crl_number, base_id, this_update, next_update, snapshot,"
        " entries, bytes, sha256, path) VALUES (coalesce($13, nextval(pg_get_serial_sequence('crl', 'id'))),"
        " $1,$2,$3,$4,$5,$6,$7,$8::text::pg_snapshot,$9,$10,$11,$12) RETURNING id",
        generation_id, scope, kind, number, base_id, this_update, next_update, snapshot, entries, size, sha256,
        path, crl_id)
    await conn.execute(
        "DELETE FROM crl_content WHERE crl_id IN (SELECT id FROM crl WHERE path = $1 AND crl_number < $2"
        " ORDER BY crl_number DESC OFFSET 1)", path, number)
    return rid


async def latest_with_content(conn, path: str) -> PublishedCRL | None:
    """The newest CRL of a URL path that has its bytes in the database (what every host serves)."""
    row = await conn.fetchrow(f"SELECT {_COLS} FROM crl WHERE path = $1"
                              " AND EXISTS (SELECT 1 FROM crl_content k WHERE k.crl_id = crl.id)"
                              " ORDER BY crl_number DESC LIMIT 1", path)
    return _published(row) if row else None


async def content(conn, crl_id: int):
    """The parts of a CRL's bytes in order (an async iterator; call inside a transaction)."""
    async for row in conn.cursor("SELECT data FROM crl_content WHERE crl_id = $1 ORDER BY part", crl_id,
                                 prefetch=4):
        yield row["data"]


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


# -- failed publications ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Failure:
    path: str
    first_failed_at: dt.datetime
    last_failed_at: dt.datetime
    attempts: int
    error: str


async def record_failure(conn, generation_id: int, scope: str, kind: str, path: str, at: dt.datetime,
                         error: str) -> None:
    await conn.execute(
        "INSERT INTO crl_failure (ca_generation_id, scope, kind, path, first_failed_at, last_failed_at, error)"
        " VALUES ($1,$2,$3,$4,$5,$5,$6) ON CONFLICT (ca_generation_id, scope, kind) DO UPDATE SET"
        " last_failed_at = EXCLUDED.last_failed_at, attempts = crl_failure.attempts + 1, error = EXCLUDED.error",
        generation_id, scope, kind, path, at, error)


async def clear_failure(conn, generation_id: int, scope: str, kind: str) -> None:
    await conn.execute("DELETE FROM crl_failure WHERE ca_generation_id = $1 AND scope = $2 AND kind = $3",
                       generation_id, scope, kind)


async def failures(conn) -> list[Failure]:
    rows = await conn.fetch("SELECT path, first_failed_at, last_failed_at, attempts, error FROM crl_failure"
                            " ORDER BY path")
    return [Failure(r["path"], r["first_failed_at"], r["last_failed_at"], r["attempts"], r["error"]) for r in rows]
