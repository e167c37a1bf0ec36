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


async def try_leases(conn, generation_id: int, scopes: list[str]) -> list[str]:
    """The leases of several scopes at once (one round trip); returns the scopes whose lease was taken."""
    keys = [_lease_key(generation_id, s) for s in scopes]
    rows = await conn.fetch(
        "SELECT i, pg_try_advisory_lock(a, b) AS ok FROM unnest($1::int[], $2::int[]) WITH ORDINALITY AS k(a, b, i)"
        " ORDER BY i", [k[0] for k in keys], [k[1] for k in keys])
    return [scopes[r["i"] - 1] for r in rows if r["ok"]]


async def release_leases(conn, generation_id: int, scopes: list[str]) -> None:
    keys = [_lease_key(generation_id, s) for s in scopes]
    await conn.execute("SELECT pg_advisory_unlock(a, b) FROM unnest($1::int[], $2::int[]) AS k(a, b)",
                       [k[0] for k in keys], [k[1] for k in keys])


# -- numbers -------------------------------------------------------------------------------------

async def allocate_number(conn, generation_id: int, scope: str) -> int:
    """The next CRL number of a scope (shared by its complete CRLs and deltas, RFC 5280 5.2.3);
    committed before use, so numbers never go backwards across restarts or processes."""
    return int(await conn.fetchval(
        "INSERT INTO crl_number (ca_generation_id, scope, last_number) VALUES ($1, $2, 1)"
        " ON CONFLICT (ca_generation_id, scope) DO UPDATE SET last_number = crl_number.last_number + 1"
        " RETURNING last_number", generation_id, scope))


async def allocate_numbers(conn, generation_id: int, scopes: list[str]) -> dict[str, int]:
    """allocate_number for several scopes in one statement (committed before use)."""
    rows = await conn.fetch(
        "INSERT INTO crl_number (ca_generation_id, scope, last_number) SELECT $1, s, 1 FROM unnest($2::text[]) AS s"
        " ON CONFLICT (ca_generation_id, scope) DO UPDATE SET last_number = crl_number.last_number + 1"
        " RETURNING scope, last_number", generation_id, scopes)
    return {r["scope"]: int(r["last_number"]) for r in rows}


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


async def add_content_refs(conn, crl_id: int, refs: list[tuple[int, int, int, int]]) -> None:
    """Parts of a CRL's bytes that are another CRL's parts (migration 0017): (part, source CRL id, its first
    part, its last part) each, in the transaction that records the CRL; the sources are committed CRLs."""
    if refs:
        await conn.execute(
            "INSERT INTO crl_content_ref (crl_id, part, source_id, first_part, last_part)"
            " SELECT $1, p, s, f, l FROM unnest($2::int[], $3::bigint[], $4::int[], $5::int[]) AS u(p, s, f, l)",
            crl_id, [r[0] for r in refs], [r[1] for r in refs], [r[2] for r in refs], [r[3] for r in refs])


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
    await prune_content(conn, path, number)
    return rid


async def prune_content(conn, path: str, number: int) -> None:
    """Only the latest two CRLs of a path keep their content (the previous one for a host still copying it),
    and a part still referenced by a kept CRL (a full CRL stored by reference, migration 0017) is never
    deleted: the content of a referenced CRL goes once no reference to it is left and it is not among the
    latest two of its own path. Called in the transaction that records CRL ``number`` of ``path``."""
    freed = await conn.fetch(
        "DELETE FROM crl_content_ref WHERE crl_id IN (SELECT id FROM crl WHERE path = $1 AND crl_number < $2"
        " ORDER BY crl_number DESC OFFSET 1) RETURNING source_id", path, number)
    await conn.execute(
        "DELETE FROM crl_content c WHERE c.crl_id IN (SELECT id FROM crl WHERE path = $1 AND crl_number < $2"
        " ORDER BY crl_number DESC OFFSET 1)"
        " AND NOT EXISTS (SELECT 1 FROM crl_content_ref r WHERE r.source_id = c.crl_id)", path, number)
    if freed:
        sources = sorted({r["source_id"] for r in freed})
        await conn.execute(
            "DELETE FROM crl_content c WHERE c.crl_id = ANY($1::bigint[])"
            " AND NOT EXISTS (SELECT 1 FROM crl_content_ref r WHERE r.source_id = c.crl_id)"
            " AND c.crl_id NOT IN (SELECT k.id FROM crl s CROSS JOIN LATERAL (SELECT id FROM crl k"
            "  WHERE k.path = s.path ORDER BY k.crl_number DESC LIMIT 2) k WHERE s.id = ANY($1::bigint[]))",
            sources)


async def prune_ahead_of_pass(conn, full_path: str, scopes: list[str]) -> None:
    """At the start of the transaction that will record a new full CRL of ``full_path`` published in one pass
    with the partition CRLs of ``scopes`` (crl_publisher.publisher.Publisher.publish_complete): the pruning
    that the new full CRL's commit makes due, done while the pass streams (nothing of it is seen by others
    before that commit, and a failed pass rolls it back). The full CRLs that then fall out of the latest two
    lose their content and references; a partition CRL they referred to loses its content when no other CRL
    refers to it and it falls out of the latest two of its path (for the scopes of the pass, whose leases
    the publisher holds until the commit: everything older than its newest CRL, since the pass adds one)."""
    freed = await conn.fetch(
        "DELETE FROM crl_content_ref WHERE crl_id IN (SELECT id FROM crl WHERE path = $1"
        " ORDER BY crl_number DESC OFFSET 1) RETURNING source_id", full_path)
    await conn.execute(
        "DELETE FROM crl_content c WHERE c.crl_id IN (SELECT id FROM crl WHERE path = $1"
        " ORDER BY crl_number DESC OFFSET 1)"
        " AND NOT EXISTS (SELECT 1 FROM crl_content_ref r WHERE r.source_id = c.crl_id)", full_path)
    if freed:
        await conn.execute(
            "DELETE FROM crl_content c WHERE c.crl_id = ANY($1::bigint[])"
            " AND NOT EXISTS (SELECT 1 FROM crl_content_ref r WHERE r.source_id = c.crl_id)"
            " AND c.crl_id NOT IN (SELECT k.id FROM crl s CROSS JOIN LATERAL (SELECT id FROM crl k"
            "  WHERE k.path = s.path ORDER BY k.crl_number DESC"
            "  LIMIT CASE WHEN s.scope = ANY($2::text[]) THEN 1 ELSE 2 END) k WHERE s.id = ANY($1::bigint[]))",
            sorted({r["source_id"] for r in freed}), scopes)


async def latest_with_content(conn, path: str) -> PublishedCRL | None:
    """The newest CRL of a URL path that has its bytes in the database (what every host serves)."""
    row = await conn.fetchrow(f"SELECT {_COLS} FROM crl WHERE path = $1"
                              " AND EXISTS (SELECT 1 FROM crl_content k WHERE k.crl_id = crl.id)"
                              " ORDER BY crl_number DESC LIMIT 1", path)
    return _published(row) if row else None


async def content(conn, crl_id: int):
    """The parts of a CRL's bytes in order, its own parts and the parts it refers to (migration 0017)
    reassembled (an async iterator; call inside a REPEATABLE READ transaction, so that every part is read
    from one snapshot)."""
    async for row in conn.cursor(
            # the order is decided on the keys alone; each part's bytes are read after, one by one
            "SELECT (SELECT data FROM crl_content c WHERE c.crl_id = k.cid AND c.part = k.cpart) AS data FROM ("
            " SELECT part AS p, 0 AS q, crl_id AS cid, part AS cpart FROM crl_content WHERE crl_id = $1"
            " UNION ALL SELECT r.part, s.part, s.crl_id, s.part FROM crl_content_ref r JOIN crl_content s"
            "  ON s.crl_id = r.source_id AND s.part BETWEEN r.first_part AND r.last_part WHERE r.crl_id = $1"
            ") k ORDER BY p, q", crl_id, prefetch=4):
        yield row["data"]


async def newest_this_update(conn, generation_id: int, scopes: list[str]) -> dt.datetime | None:
    """The latest thisUpdate of any CRL of these scopes."""
    return await conn.fetchval("SELECT max(this_update) FROM crl WHERE ca_generation_id = $1 AND scope = ANY($2::text[])",
                               generation_id, scopes)


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


async def clear_failures(conn, generation_id: int, scopes: list[str], kind: str) -> None:
    await conn.execute("DELETE FROM crl_failure WHERE ca_generation_id = $1 AND scope = ANY($2::text[]) AND kind = $3",
                       generation_id, scopes, kind)


async def failures(conn) -> list[Failure]:
    rows = await conn.fetch("SELECT path, first_failed_at, last_failed_at, attempts, error FROM crl_failure"
                            " ORDER BY path")
    return [Failure(r["path"], r["first_failed_at"], r["last_failed_at"], r["attempts"], r["error"]) for r in rows]
