"""Resident-register feed events: claiming event ids, finding the certificates they touch, outcomes.

Set-based: a chunk of events is copied into a temporary table and claimed with one INSERT ... ON CONFLICT
DO NOTHING (an event id already recorded, or being recorded by a concurrent transaction, is not ours),
so that a chunk costs a handful of round trips whatever its size.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ca_core.records import CertificateRecord
from storage.certificates import COLUMNS as CERT_COLS, record_of as cert_record


@dataclass(frozen=True)
class StoredEvent:
    event_id: str
    resident_hash: bytes
    kind: str
    occurred_at: dt.datetime
    outcome: str
    detail: str | None


async def claim(conn, client_id: int, events, now: dt.datetime) -> set[str]:
    """Record the events whose ids are new (outcome 'no_certificate' until set_applied); ``events`` are
    (seq, event_id, resident_hash, kind, occurred_at). Returns the ids this transaction claimed."""
    await conn.execute("CREATE TEMP TABLE feed_in (seq int, event_id text, resident_hash bytea, kind text,"
                       " occurred_at timestamptz) ON COMMIT DROP")
    await conn.copy_records_to_table("feed_in", records=events,
                                     columns=["seq", "event_id", "resident_hash", "kind", "occurred_at"])
    rows = await conn.fetch(
        "INSERT INTO feed_event (event_id, client_id, resident_hash, kind, occurred_at, outcome, applied_at)"
        " SELECT DISTINCT ON (event_id) event_id, $1, resident_hash, kind, occurred_at, 'no_certificate', $2"
        " FROM feed_in ORDER BY event_id, seq ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
        client_id, now)
    return {r["event_id"] for r in rows}


async def stored(conn, event_ids) -> dict[str, StoredEvent]:
    rows = await conn.fetch("SELECT event_id, resident_hash, kind, occurred_at, outcome, detail FROM feed_event"
                            " WHERE event_id = ANY($1::text[])", list(event_ids))
    return {r["event_id"]: StoredEvent(r["event_id"], bytes(r["resident_hash"]), r["kind"], r["occurred_at"],
                                       r["outcome"], r["detail"]) for r in rows}


async def live_certificates(conn, resident_hashes) -> list[CertificateRecord]:
    """The residents' certificates that are not revoked, locked in id order."""
    rows = await conn.fetch(
        f"SELECT {CERT_COLS} FROM certificate WHERE resident_hash = ANY($1::bytea[]) AND status <> 'revoked'"
        " ORDER BY id FOR UPDATE", list(resident_hashes))
    return [cert_record(r) for r in rows]


async def set_applied(conn, outcomes) -> None:
    """``outcomes``: (event_id, detail, revoked count) of claimed events that were applied."""
    outcomes = list(outcomes)
    if outcomes:
        await conn.execute(
            "UPDATE feed_event f SET outcome = 'applied', detail = u.detail, revoked = u.revoked"
            " FROM unnest($1::text[], $2::text[], $3::int[]) AS u(event_id, detail, revoked)"
            " WHERE f.event_id = u.event_id",
            [o[0] for o in outcomes], [o[1] for o in outcomes], [o[2] for o in outcomes])


async def set_outcome(conn, event_ids: list[str], outcome: str) -> None:
    """Record the outcome of claimed events that changed nothing (e.g. 'issued_after_event')."""
    if event_ids:
        await conn.execute("UPDATE feed_event SET outcome = $2 WHERE event_id = ANY($1::text[])", event_ids, outcome)


async def count_applied(conn, event_ids) -> dict[str, int]:
    """How many feed revocations each event caused (for tests and the CLI)."""
    rows = await conn.fetch("SELECT source_ref, count(*) AS n FROM revocation WHERE source = 'feed'"
                            " AND source_ref = ANY($1::text[]) GROUP BY source_ref", list(event_ids))
    return {r["source_ref"]: r["n"] for r in rows}


# -- batches in progress (the backlog the status page shows) ----------------------------------------
async def batch_started(conn, batch_id, client_id: int, events: int, now: dt.datetime) -> None:
    await conn.execute("DELETE FROM feed_batch WHERE updated_at < $1", now - dt.timedelta(days=1))
    await conn.execute("INSERT INTO feed_batch (id, client_id, events, started_at, updated_at)"
                       " VALUES ($1, $2, $3, $4, $4)", batch_id, client_id, events, now)


async def batch_progress(conn, batch_id, applied: int, now: dt.datetime) -> None:
    await conn.execute("UPDATE feed_batch SET applied = applied + $2, updated_at = $3 WHERE id = $1",
                       batch_id, applied, now)


async def batch_done(conn, batch_id) -> None:
    await conn.execute("DELETE FROM feed_batch WHERE id = $1", batch_id)


@dataclass(frozen=True)
class Backlog:
    batches: int  # batches being applied
    waiting: int  # their events not applied yet
    stalled: int  # batches not advanced for ``stalled_after`` (cut off; the sender resends them)
    last_applied_at: dt.datetime | None  # the newest event recorded
    last_day: dict[str, int]  # events recorded in the last 24 hours by outcome


async def backlog(conn, now: dt.datetime, stalled_after: dt.timedelta) -> Backlog:
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE updated_at >= $1) AS batches,"
        " coalesce(sum(events - applied) FILTER (WHERE updated_at >= $1), 0) AS waiting,"
        " count(*) FILTER (WHERE updated_at < $1) AS stalled FROM feed_batch", now - stalled_after)
    last = await conn.fetchval("SELECT max(applied_at) FROM feed_event")
    day = await conn.fetch("SELECT outcome, count(*) AS n FROM feed_event WHERE applied_at >= $1 GROUP BY 1",
                           now - dt.timedelta(hours=24))
    return Backlog(row["batches"], row["waiting"], row["stalled"], last, {r["outcome"]: r["n"] for r in day})
