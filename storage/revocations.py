"""Revocations and holds. Rows are history: a hold ends by getting released_at, never by deletion."""
from __future__ import annotations

import datetime as dt

from ca_core.records import CertificateRecord, RevocationRecord
from ca_core.serials import serial_bytes

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
                 source_ref: str | None, entry_der: bytes) -> int:
    """Record a revocation or hold of ``cert`` (the caller holds the certificate row lock)."""
    return await conn.fetchval(
        "INSERT INTO revocation (certificate_id, ca_generation_id, serial, partition, cert_not_after, reason,"
        " revoked_at, effective_at, invalidity_date, source, source_ref, entry_der)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) RETURNING id",
        cert.id, cert.ca_generation_id, serial_bytes(cert.serial), cert.partition, cert.not_after, reason,
        revoked_at, effective_at, invalidity_date, source, source_ref, entry_der)


async def active_for(conn, certificate_id: int) -> RevocationRecord | None:
    """The revocation or hold currently in force (or accepted) for a certificate."""
    row = await conn.fetchrow(f"SELECT {_COLS} FROM revocation WHERE certificate_id = $1 AND released_at IS NULL",
                              certificate_id)
    return _record(row) if row else None


async def release(conn, revocation_id: int, *, at: dt.datetime, kind: str) -> None:
    """End a hold: kind 'hold_released' (back to good) or 'hold_revoked' (replaced by a revocation)."""
    await conn.execute("UPDATE revocation SET released_at = $2, release_kind = $3 WHERE id = $1",
                       revocation_id, at, kind)


STATUS_CHANNEL = "shomei_status"  # NOTIFY on every status change (payload: hex serial), sent on commit


async def notify_status(conn, serial: int) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", STATUS_CHANNEL, format(serial, "x"))


async def apply_revocation(conn, cert: CertificateRecord, *, reason: int, at: dt.datetime,
                           effective_at: dt.datetime | None, source: str, source_ref: str | None,
                           invalidity_date: dt.datetime | None = None) -> int:
    """Revoke ``cert`` inside the caller's transaction (the caller holds the row lock): a hold in force
    ends as 'hold_revoked', the revocation row gets its CRL entry DER, the certificate becomes revoked,
    and listeners are notified on commit. Returns the revocation id."""
    from ca_core.revocation import Reason, encode_entry

    active = await active_for(conn, cert.id)
    if active is not None:
        await release(conn, active.id, at=at, kind="hold_revoked")
    entry = encode_entry(cert.serial, at, Reason(reason), invalidity_date)
    rid = await insert(conn, cert, reason=reason, revoked_at=at, effective_at=effective_at,
                       invalidity_date=invalidity_date, source=source, source_ref=source_ref, entry_der=entry)
    await conn.execute("UPDATE certificate SET status = 'revoked' WHERE id = $1", cert.id)
    await notify_status(conn, cert.serial)
    return rid


async def place_hold(conn, cert: CertificateRecord, *, at: dt.datetime, source: str = "hold",
                     source_ref: str | None = None) -> int:
    """Place certificateHold on ``cert`` (caller holds the row lock; the certificate must be valid)."""
    from ca_core.revocation import Reason, encode_entry

    entry = encode_entry(cert.serial, at, Reason.certificate_hold)
    rid = await insert(conn, cert, reason=int(Reason.certificate_hold), revoked_at=at, effective_at=at,
                       invalidity_date=None, source=source, source_ref=source_ref, entry_der=entry)
    await conn.execute("UPDATE certificate SET status = 'held' WHERE id = $1", cert.id)
    await notify_status(conn, cert.serial)
    return rid


async def release_hold(conn, cert: CertificateRecord, *, at: dt.datetime) -> int:
    """End the hold on ``cert``: the entry leaves the CRL (removeFromCRL in the next delta)."""
    active = await active_for(conn, cert.id)
    if active is None or active.reason != 6:
        raise ValueError("certificate is not on hold")
    await release(conn, active.id, at=at, kind="hold_released")
    await conn.execute("UPDATE certificate SET status = 'valid' WHERE id = $1", cert.id)
    await notify_status(conn, cert.serial)
    return active.id
