"""Revocations and holds. Rows are history: a hold ends by getting released_at, never by deletion."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ca_core.records import CertificateRecord, RevocationRecord
from ca_core.revocation import Reason
from ca_core.serials import serial_bytes
from storage.certificates import COLUMNS as CERT_COLS, record_of as cert_record

HOLD = int(Reason.certificate_hold)

_COLS = ("id, certificate_id, ca_generation_id, serial, partition, reason, revoked_at, effective_at,"
         " invalidity_date, source, source_ref, released_at")


def _record(row) -> RevocationRecord:
    return RevocationRecord(
        id=row["id"], certificate_id=row["certificate_id"], ca_generation_id=row["ca_generation_id"],
        serial=int.from_bytes(row["serial"], "big"), partition=row["partition"], reason=row["reason"],
        revoked_at=row["revoked_at"], effective_at=row["effective_at"], invalidity_date=row["invalidity_date"],
        source=row["source"], source_ref=row["source_ref"], released_at=row["released_at"])


async def insert(conn, cert: CertificateRecord, *, reason: int, revoked_at: dt.datetime,
                 effective_at: dt.datetime | None, invalidity_date: dt.datetime | None, source: str,
                 source_ref: str | None, entry_der: bytes | None) -> int:
    """Record a revocation or hold of ``cert`` (the caller holds the certificate row lock)."""
    return await conn.fetchval(
        "INSERT INTO revocation (certificate_id, ca_generation_id, serial, partition, cert_not_after, reason,"
        " revoked_at, effective_at, invalidity_date, source, source_ref, entry_der)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) RETURNING id",
        cert.id, cert.ca_generation_id, serial_bytes(cert.serial), cert.partition, cert.not_after, reason,
        revoked_at, effective_at, invalidity_date, source, source_ref, entry_der)


async def active_for(conn, certificate_id: int) -> RevocationRecord | None:
    """The revocation or hold currently in force (effective, not released) for a certificate."""
    row = await conn.fetchrow(f"SELECT {_COLS} FROM revocation WHERE certificate_id = $1 AND released_at IS NULL"
                              " AND effective_at IS NOT NULL", certificate_id)
    return _record(row) if row else None


async def pending_for(conn, certificate_id: int) -> RevocationRecord | None:
    """The online revocation accepted for a certificate and not yet effective (next CRL issuance)."""
    row = await conn.fetchrow(f"SELECT {_COLS} FROM revocation WHERE certificate_id = $1 AND released_at IS NULL"
                              " AND effective_at IS NULL", certificate_id)
    return _record(row) if row else None


async def release(conn, revocation_id: int, *, at: dt.datetime, kind: str) -> None:
    """End a hold: kind 'hold_released' (back to good) or 'hold_revoked' (replaced by a revocation)."""
    await conn.execute("UPDATE revocation SET released_at = $2, release_kind = $3 WHERE id = $1",
                       revocation_id, at, kind)


# Status changes and CRL snapshots. A writer takes this lock (shared) in its transaction before it reads
# the clock for a revocation's date; a CRL publisher takes it exclusively while it reads the clock for
# thisUpdate and takes its snapshot. So a revocation dated before a CRL's thisUpdate has committed
# before that CRL's snapshot: it is in the CRL (docs/domain.md, CRLs).
_STATUS_CHANGE_LOCK = 0x5348_4F4D_4549_0002


async def enter_status_change(conn) -> None:
    """First in a transaction that changes statuses (shared: writers never wait for each other)."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", _STATUS_CHANGE_LOCK)


async def hold_status_changes(conn) -> None:
    """Wait until every status change in progress has ended, and keep new ones out (session lock)."""
    await conn.execute("SELECT pg_advisory_lock($1)", _STATUS_CHANGE_LOCK)


async def allow_status_changes(conn) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", _STATUS_CHANGE_LOCK)


async def apply_revocation(conn, cert: CertificateRecord, *, reason: int, at: dt.datetime,
                           effective_at: dt.datetime | None, source: str, source_ref: str | None,
                           entry_der: bytes | None, invalidity_date: dt.datetime | None = None) -> int:
    """Revoke ``cert`` inside the caller's transaction (the caller holds the row lock): a hold in force
    ends as 'hold_revoked', an accepted online revocation as 'pending_replaced', and the revocation
    row keeps ``entry_der`` (its CRL entry). The certificate's status follows in the database
    (migration 0006) and listeners are notified on commit. Returns the revocation id."""
    if effective_at is None:
        return await accept_pending(conn, cert, reason=reason, at=at, source=source, source_ref=source_ref,
                                    invalidity_date=invalidity_date)
    active = await active_for(conn, cert.id)
    if active is not None:
        await release(conn, active.id, at=at, kind="hold_revoked")
    pending = await pending_for(conn, cert.id)
    if pending is not None:
        # An accepted online revocation that never took effect is made moot by this one.
        await release(conn, pending.id, at=at, kind="pending_replaced")
    return await insert(conn, cert, reason=reason, revoked_at=at, effective_at=effective_at,
                        invalidity_date=invalidity_date, source=source, source_ref=source_ref, entry_der=entry_der)


async def place_hold(conn, cert: CertificateRecord, *, at: dt.datetime, entry_der: bytes, source: str = "hold",
                     source_ref: str | None = None) -> int:
    """Place certificateHold on ``cert`` (caller holds the row lock; the certificate must be valid)."""
    return await insert(conn, cert, reason=HOLD, revoked_at=at, effective_at=at,
                        invalidity_date=None, source=source, source_ref=source_ref, entry_der=entry_der)


async def release_hold(conn, cert: CertificateRecord, *, at: dt.datetime) -> int:
    """End the hold on ``cert``: the entry leaves the CRL (removeFromCRL in the next delta)."""
    active = await active_for(conn, cert.id)
    if active is None or active.reason != HOLD:
        raise ValueError("certificate is not on hold")
    await release(conn, active.id, at=at, kind="hold_released")
    return active.id


async def accept_pending(conn, cert: CertificateRecord, *, reason: int, at: dt.datetime, source: str,
                         source_ref: str | None, invalidity_date: dt.datetime | None = None) -> int:
    """Record an accepted online revocation (caller holds the row lock): effective_at and the CRL entry
    stay empty, and the certificate keeps its status (and any hold), until make_effective() runs at
    the next CRL issuance; ``at`` is kept as the time of acceptance until then."""
    return await insert(conn, cert, reason=reason, revoked_at=at, effective_at=None,
                        invalidity_date=invalidity_date, source=source, source_ref=source_ref, entry_der=None)


@dataclass(frozen=True)
class Pending:
    """An accepted online revocation waiting for the next CRL issuance."""

    revocation_id: int
    certificate_id: int
    serial: int
    reason: int
    invalidity_date: dt.datetime | None
    source_ref: str | None


async def lock_pending(conn) -> list[Pending]:
    """Every accepted online revocation not yet effective, with its certificate row locked (in id
    order, the one lock order of every status change)."""
    rows = await conn.fetch(
        "SELECT r.id, r.certificate_id, r.serial, r.reason, r.invalidity_date, r.source_ref"
        " FROM certificate c JOIN revocation r ON r.certificate_id = c.id"
        " WHERE r.effective_at IS NULL AND r.released_at IS NULL ORDER BY c.id FOR UPDATE OF c")
    return [Pending(r["id"], r["certificate_id"], int.from_bytes(r["serial"], "big"), r["reason"],
                    r["invalidity_date"], r["source_ref"]) for r in rows]


async def make_effective(conn, at: dt.datetime, entries: list[tuple[Pending, bytes]]) -> int:
    """Make accepted online revocations effective at ``at`` (their revocationDate) with their CRL entry
    DER, in the caller's transaction (lock_pending first): a hold in force ends as 'hold_revoked', the
    certificates' status follows, an audit record each. Set-based; returns how many."""
    if not entries:
        return 0
    ids = [p.certificate_id for p, _ in entries]
    await conn.execute(
        "UPDATE revocation SET released_at = $2, release_kind = 'hold_revoked'"
        " WHERE certificate_id = ANY($1::bigint[]) AND released_at IS NULL AND effective_at IS NOT NULL"
        " AND reason = $3", ids, at, HOLD)
    await conn.execute(
        "UPDATE revocation r SET effective_at = $2, revoked_at = $2, entry_der = u.der"
        " FROM unnest($1::bigint[], $3::bytea[]) AS u(id, der) WHERE r.id = u.id",
        [p.revocation_id for p, _ in entries], at, [der for _, der in entries])
    await conn.executemany(
        "INSERT INTO audit_log (action, serial, request_id, details) VALUES ('online_revocation_effective', $1, $2, $3)",
        [(serial_bytes(p.serial), p.source_ref, {"effective_at": at.isoformat()}) for p, _ in entries])
    return len(entries)


async def lock_certificates(conn, ids) -> list[CertificateRecord]:
    """Lock certificate rows in id order (the one lock order of every status change) and return them."""
    rows = await conn.fetch(f"SELECT {CERT_COLS} FROM certificate WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
                            list(ids))
    return [cert_record(r) for r in rows]


async def revoke_many(conn, items, *, at: dt.datetime, source: str, client_id: int | None) -> None:
    """Set-based revocation of many certificates in the caller's transaction (the resident-register feed):
    ``items`` are (CertificateRecord, reason, source_ref, entry_der), rows already locked and not revoked.
    Same effects as apply_revocation for each: holds in force end as 'hold_revoked', accepted online
    revocations as 'pending_replaced', revocation rows with their CRL entry DER (the status follows in
    the database), one audit record per certificate (the status triggers notify on commit)."""
    if not items:
        return
    ids = [c.id for c, *_ in items]
    await conn.execute(
        "UPDATE revocation SET released_at = $2, release_kind = CASE WHEN effective_at IS NULL"
        " THEN 'pending_replaced' ELSE 'hold_revoked' END"
        " WHERE certificate_id = ANY($1::bigint[]) AND released_at IS NULL", ids, at)
    await conn.copy_records_to_table(
        "revocation",
        columns=["certificate_id", "ca_generation_id", "serial", "partition", "cert_not_after", "reason",
                 "revoked_at", "effective_at", "source", "source_ref", "entry_der"],
        records=[(c.id, c.ca_generation_id, serial_bytes(c.serial), c.partition, c.not_after, int(reason), at, at,
                  source, ref, entry) for c, reason, ref, entry in items])
    serials = [serial_bytes(c.serial) for c, *_ in items]
    await conn.execute(
        "INSERT INTO audit_log (client_id, action, serial, request_id, details)"
        " SELECT $1, 'revoke', s, ref, jsonb_build_object('reason', r, 'source', $5::text, 'kind', k)"
        " FROM unnest($2::bytea[], $3::text[], $4::int[], $6::text[]) AS u(s, ref, r, k)",
        client_id, serials, [ref for _c, _r, ref, _e in items], [int(r) for _c, r, _ref, _e in items], source,
        [c.kind for c, *_ in items])


async def mark_free_reissue(conn, rows, *, at: dt.datetime) -> None:
    """Entitle residents to a free reissue; ``rows`` are (resident_hash, cause, source_ref), cause one of
    address_notation_changed, municipal_merger, recording_error."""
    rows = list(rows)
    if rows:
        await conn.execute("INSERT INTO free_reissue (resident_hash, cause, source_ref, created_at)"
                           " SELECT h, c, r, $4 FROM unnest($1::bytea[], $2::text[], $3::text[]) AS u(h, c, r)",
                           [h for h, _c, _r in rows], [c for _h, c, _r in rows], [r for _h, _c, r in rows], at)


async def recent_by_hour(conn, since) -> list[tuple[object, int, int]]:
    """(hour, CRLReason, count) of revocations and holds recorded since ``since``, for the status page."""
    rows = await conn.fetch("SELECT date_trunc('hour', revoked_at) AS hour, reason, count(*) AS n FROM revocation"
                            " WHERE revoked_at >= $1 GROUP BY 1, 2 ORDER BY 1, 2", since)
    return [(r["hour"], r["reason"], r["n"]) for r in rows]
