"""OCSP reads and writes: the status of (issuer generation, serial) together with a cached answer
that is still correct, the shared cache of signed answers, and per-verifier answer counts."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ca_core.ocsp import CertStatus, status_from_record
from ca_core.serials import serial_bytes

# One query: the certificate's status (one row: the database derives it from the revocation in force,
# migration 0006) and the cached answer for this CertID if it has not expired.
_STATUS_SQL = """
SELECT c.id IS NOT NULL AS exists, c.status, c.status_reason, c.status_at,
       k.status_key, k.response, k.this_update, k.next_update
FROM (SELECT 1) AS one
LEFT JOIN certificate c ON c.serial = $2 AND c.ca_generation_id = $1
LEFT JOIN ocsp_response_cache k ON k.cert_id = $3 AND k.next_update > $4
"""


@dataclass(frozen=True)
class Cached:
    response: bytes
    this_update: dt.datetime
    next_update: dt.datetime


@dataclass(frozen=True)
class StatusLookup:
    status: CertStatus
    cached: Cached | None  # a shared answer signed for exactly this status, not yet expired


def _valid_serial(serial: int) -> bool:
    return 0 < serial < (1 << 159)  # RFC 5280 4.1.2.2: at most 20 octets; ours are 16


async def status(conn, ca_generation_id: int, serial: int, *, cert_id: bytes | None = None,
                 fresh_after: dt.datetime | None = None) -> StatusLookup:
    """Status of ``serial`` under one CA generation (unknown if never issued there) and, when
    ``cert_id`` is given, the cached answer for it whose status still holds and whose nextUpdate is after
    ``fresh_after``."""
    if not _valid_serial(serial):
        return StatusLookup(status_from_record(exists=False, status=None, reason=None, since=None), None)
    row = await conn.fetchrow(_STATUS_SQL, ca_generation_id, serial_bytes(serial), cert_id or b"",
                              fresh_after or dt.datetime.now(dt.timezone.utc))
    st = status_from_record(exists=row["exists"], status=row["status"], reason=row["status_reason"],
                            since=row["status_at"])
    cached = None
    if row["response"] is not None and row["status_key"] == st.key:
        cached = Cached(bytes(row["response"]), row["this_update"], row["next_update"])
    return StatusLookup(st, cached)


async def statuses(conn, ca_generation_id: int, serials: list[int]) -> list[CertStatus]:
    """Status of each serial (for requests with several CertIDs)."""
    return [(await status(conn, ca_generation_id, s)).status for s in serials]


async def store_responses(conn, rows: list[tuple[bytes, int, int, str, bytes, dt.datetime, dt.datetime]]) -> None:
    """Upsert signed answers: (cert_id, ca_generation_id, serial, status_key, response, this_update,
    next_update). A row for a status that no longer holds is harmless: it is never served."""
    await conn.executemany(
        "INSERT INTO ocsp_response_cache (cert_id, ca_generation_id, serial, status_key, response, this_update,"
        " next_update) VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (cert_id) DO UPDATE SET"
        " status_key = EXCLUDED.status_key, response = EXCLUDED.response, this_update = EXCLUDED.this_update,"
        " next_update = EXCLUDED.next_update WHERE ocsp_response_cache.this_update <= EXCLUDED.this_update",
        [(cid, gen, serial_bytes(serial), key, resp, tu, nu) for cid, gen, serial, key, resp, tu, nu in rows])


async def purge_expired(conn, before: dt.datetime) -> int:
    """Delete cached answers whose nextUpdate has passed; returns how many."""
    res = await conn.execute("DELETE FROM ocsp_response_cache WHERE next_update < $1", before)
    return int(res.split()[-1])


async def add_usage(conn, day: dt.date, counts: dict[int, int]) -> None:
    """Add answer counts of verifiers (client id -> answers) to their row of ``day``."""
    ids = list(counts)
    await conn.execute(
        "INSERT INTO ocsp_verifier_usage (client_id, day, answers)"
        " SELECT u.id, $1, u.n FROM unnest($2::int[], $3::bigint[]) AS u(id, n)"
        " ON CONFLICT (client_id, day) DO UPDATE SET answers = ocsp_verifier_usage.answers + EXCLUDED.answers",
        day, ids, [counts[i] for i in ids])


async def add_minutes(conn, minutes: dict[int, list[int]]) -> None:
    """Add answer counts per UTC minute (epoch minute -> [answers, misses, errors]) to ocsp_minute."""
    keys = sorted(minutes)  # one lock order for every process
    await conn.execute(
        "INSERT INTO ocsp_minute (minute, answers, misses, errors)"
        " SELECT to_timestamp(u.m * 60), u.a, u.s, u.e"
        " FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) AS u(m, a, s, e)"
        " ON CONFLICT (minute) DO UPDATE SET answers = ocsp_minute.answers + EXCLUDED.answers,"
        " misses = ocsp_minute.misses + EXCLUDED.misses, errors = ocsp_minute.errors + EXCLUDED.errors",
        keys, [minutes[k][0] for k in keys], [minutes[k][1] for k in keys], [minutes[k][2] for k in keys])


async def minutes(conn, since: dt.datetime) -> dict[dt.datetime, tuple[int, int, int]]:
    """(answers, misses, errors) per minute since ``since``."""
    rows = await conn.fetch("SELECT minute, answers, misses, errors FROM ocsp_minute WHERE minute >= $1", since)
    return {r["minute"]: (r["answers"], r["misses"], r["errors"]) for r in rows}


async def purge_minutes(conn, before: dt.datetime) -> None:
    await conn.execute("DELETE FROM ocsp_minute WHERE minute < $1", before)


async def usage(conn, client_id: int, day: dt.date | None = None) -> int:
    """Answers counted for a verifier (on one day, or in total)."""
    if day is None:
        return await conn.fetchval("SELECT coalesce(sum(answers), 0) FROM ocsp_verifier_usage WHERE client_id = $1",
                                   client_id)
    return await conn.fetchval("SELECT coalesce(sum(answers), 0) FROM ocsp_verifier_usage"
                               " WHERE client_id = $1 AND day = $2", client_id, day)


async def usage_report(conn, since: dt.date, until: dt.date) -> list[tuple[str, dt.date, int]]:
    """Answers per verifier and day (JST) in [since, until], for billing."""
    rows = await conn.fetch(
        "SELECT c.name, u.day, u.answers FROM ocsp_verifier_usage u JOIN client c ON c.id = u.client_id"
        " WHERE u.day BETWEEN $1 AND $2 ORDER BY c.name, u.day", since, until)
    return [(r["name"], r["day"], r["answers"]) for r in rows]
