"""The resident-register feed (住基連携 異動等失効情報): batches of change events -> automatic revocations.

Idempotent by event id: every event applied is recorded (feed_event) with its outcome in the
transaction that applies it, so a resent event is answered 'duplicate' and changes nothing. A batch is
applied in chunks of ``revocation.feed_chunk_events``, one transaction each and in order, so a batch cut
off half-way (client gone, process killed) leaves whole chunks applied and the rest untouched: resending
the same batch gives the same state.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from collections import Counter as Tally, defaultdict
from dataclasses import dataclass
from typing import Annotated, Literal

import asyncpg
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from ca_core import errors
from ca_core.clock import Clock, parse_rfc3339
from ca_core.config import RevocationConfig
from ca_core.kinds import SIGNING
from ca_core.lifecycle import FEED_RULES, cascade_reason, cascades
from ca_core.municipality import validate_code
from ca_core.revocation import encode_entry
from ca_core.resident import resident_hash
from storage import audit, feed_events, residences, revocations as rev_store
from plumbing.status_channel import StatusSync, no_sync
from storage.db import unavailable_when_down

log = logging.getLogger(__name__)

FEED_EVENTS = Counter("shomei_feed_events_total", "Resident-register feed events by outcome", ["outcome"])
FEED_BATCH = Histogram("shomei_feed_batch_seconds", "Time to apply a feed batch",
                       buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120))

MAX_FUTURE = dt.timedelta(days=1)


@dataclass(frozen=True)
class FeedEvent:
    seq: int
    event_id: str
    resident_hash: bytes
    kind: str
    occurred_at: dt.datetime
    municipality_code: str | None = None  # a move: the municipality moved to (its terminals act from then)


class Rejected(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def _rfc3339(value: str) -> dt.datetime:
    return parse_rfc3339(value)


class EventBody(BaseModel):
    """One event as the register sends it; the order of the fields is the order of the checks."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    event_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
    resident_code: Annotated[str, Field(pattern=r"^[0-9]{11}$")]
    kind: Literal[tuple(FEED_RULES)]  # type: ignore[valid-type]
    occurred_at: Annotated[dt.datetime, BeforeValidator(_rfc3339)]
    municipality_code: Annotated[str, Field(pattern=r"^[0-9]{6}$")] | None = None


_REASONS = {"event_id": "invalid_event_id", "resident_code": "invalid_resident_code", "kind": "unknown_kind",
            "occurred_at": "invalid_occurred_at", "municipality_code": "invalid_municipality_code"}


def _reason(exc: ValidationError) -> str:
    """The reason an event is rejected: an unknown field first, then a missing one, then the first field
    (in the order of EventBody) that is wrong."""
    found = exc.errors()
    for kind, label in (("extra_forbidden", "unknown_field"), ("missing", "missing_field")):
        names = sorted(str(e["loc"][0]) for e in found if e["type"] == kind)
        if names:
            return f"{label}:{names[0]}"
    wrong = {e["loc"][0] for e in found}
    return next(reason for name, reason in _REASONS.items() if name in wrong)


def parse_event(raw, seq: int, key: bytes, now: dt.datetime) -> FeedEvent:
    """Check one event; raises Rejected(reason) naming what is wrong (the event is not recorded)."""
    if not isinstance(raw, dict):
        raise Rejected("not_an_object")
    try:
        body = EventBody.model_validate(raw)
    except ValidationError as exc:
        raise Rejected(_reason(exc)) from None
    occurred_at = body.occurred_at
    if occurred_at > now + MAX_FUTURE:
        raise Rejected("occurred_at_in_future")
    if body.municipality_code is not None:
        if body.kind != "moved":
            raise Rejected("municipality_code_only_for_moved")
        try:
            validate_code(body.municipality_code)
        except errors.ShomeiError:
            raise Rejected("invalid_municipality_code") from None
    return FeedEvent(seq, body.event_id, resident_hash(key, body.resident_code), body.kind, occurred_at,
                     body.municipality_code)


def parse_batch(body: bytes, content_type: str, max_events: int) -> list:
    """The list of raw events of a batch: {"events": [...]} (application/json) or JSON lines
    (application/x-ndjson). Raises InvalidRequest for a body that is not a batch."""
    try:
        if content_type == "application/x-ndjson":
            events = [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
        else:
            data = json.loads(body)
            if not isinstance(data, dict) or set(data) != {"events"} or not isinstance(data["events"], list):
                raise errors.InvalidRequest('the body must be {"events": [...]}', field="events",
                                            code="invalid_batch")
            events = data["events"]
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise errors.InvalidRequest("the body is not valid JSON", code="malformed_json") from None
    if not events:
        raise errors.InvalidRequest("the batch has no events", field="events", code="empty_batch")
    if len(events) > max_events:
        raise errors.PayloadTooLarge(f"a batch holds at most {max_events} events; split it", field="events")
    return events


class FeedService:
    """The feed, built from a pool, a clock, the resident-hash key and the revocation settings."""

    def __init__(self, *, pool, clock: Clock, resident_key: bytes, settings: RevocationConfig,
                 status_sync: StatusSync = no_sync):
        self.pool = pool
        self.clock = clock
        self.resident_key = resident_key
        self.settings = settings
        self.status_sync = status_sync

    @classmethod
    def from_runtime(cls, rt) -> "FeedService":
        return cls(pool=rt.pool, clock=rt.clock, resident_key=rt.resident_key, settings=rt.cfg.revocation,
                   status_sync=rt.status.sync)

    async def apply(self, client, raw_events: list) -> dict:
        """Apply a batch; returns {"results": [...], "summary": {...}} with one result per event, in order."""
        started = time.perf_counter()
        now = self.clock.now()
        results: list[dict | None] = [None] * len(raw_events)
        parsed: list[FeedEvent] = []
        for i, raw in enumerate(raw_events):
            try:
                parsed.append(parse_event(raw, i, self.resident_key, now))
            except Rejected as exc:
                eid = raw.get("event_id") if isinstance(raw, dict) and isinstance(raw.get("event_id"), str) else None
                results[i] = {"event_id": eid, "outcome": "rejected", "reason": exc.reason}
        size = self.settings.feed_chunk_events
        # A batch of several transactions is shown as backlog on the status page while it is applied.
        batch = uuid.uuid4() if len(parsed) > size else None
        try:
            if batch is not None:
                await self._progress(feed_events.batch_started, batch, client.id, len(parsed), now)
            for start in range(0, len(parsed), size):
                chunk = parsed[start:start + size]
                try:
                    with unavailable_when_down(f"the database is unavailable; events before {chunk[0].event_id} "
                                               "were applied, resend the batch"):
                        for seq, result in (await self._apply_chunk(client, chunk, now, batch)).items():
                            results[seq] = result
                except asyncpg.DeadlockDetectedError:
                    raise errors.Unavailable("concurrent changes; resend the batch (applied events are answered "
                                             "duplicate)", code="concurrent_change", retry_after=1) from None
        finally:
            if batch is not None:
                await self._progress(feed_events.batch_done, batch)
        if any(r and r.get("revoked") for r in results):
            await self.status_sync()
        summary = Tally(r["outcome"] for r in results)
        for outcome, n in summary.items():
            FEED_EVENTS.labels(outcome).inc(n)
        FEED_BATCH.observe(time.perf_counter() - started)
        return {"results": results, "summary": {k: summary.get(k, 0) for k in OUTCOMES}}

    async def _progress(self, write, *args) -> None:
        """Record a batch's progress; best effort (the backlog is shown, never relied on)."""
        try:
            async with self.pool.acquire() as conn:
                await write(conn, *args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("feed progress not recorded: %s", type(exc).__name__)

    async def _apply_chunk(self, client, chunk: list[FeedEvent], now: dt.datetime, batch=None) -> dict[int, dict]:
        """One transaction: claim the chunk's event ids, apply the new events, answer the repeats."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await rev_store.enter_status_change(conn)
                now = self.clock.now()  # this chunk's revocation date, read under the lock
                claimed = await feed_events.claim(
                    conn, client.id, [(e.seq, e.event_id, e.resident_hash, e.kind, e.occurred_at) for e in chunk], now)
                first: dict[str, FeedEvent] = {}
                new: list[FeedEvent] = []
                repeats: list[FeedEvent] = []
                for e in chunk:
                    if e.event_id in claimed and e.event_id not in first:
                        first[e.event_id] = e
                        new.append(e)
                    else:
                        repeats.append(e)
                out, revoked = await self._apply_new(conn, client, new, now)
                earlier = await feed_events.stored(conn, {e.event_id for e in repeats} - claimed)
                for e in repeats:
                    out[e.seq] = _repeat_outcome(e, first.get(e.event_id), out, earlier)
                counts = Tally(r["outcome"] for r in out.values())
                await audit.record(conn, action="feed_chunk", client_id=client.id,
                                   details={"events": len(chunk), "revoked": revoked, **counts})
                if batch is not None:
                    await feed_events.batch_progress(conn, batch, len(chunk), self.clock.now())
        return out

    async def _apply_new(self, conn, client, new: list[FeedEvent], now: dt.datetime) -> tuple[dict[int, dict], int]:
        """Apply the rules to the events seen for the first time; returns their outcomes and how many
        certificates were revoked."""
        by_resident: dict[bytes, dict] = defaultdict(dict)
        for cert in await feed_events.live_certificates(conn, {e.resident_hash for e in new}):
            by_resident[cert.resident_hash][cert.kind] = cert
        out: dict[int, dict] = {}
        items, applied, reissue, issued_after = [], [], [], []
        for e in new:  # in batch order: an earlier event of a resident takes the certificate first
            rule = FEED_RULES[e.kind]
            live = by_resident.get(e.resident_hash, {})
            # An event applies only to certificates issued before it occurred (a certificate issued
            # after a move already carries the new address).
            concerned = [k for k in (rule.revokes or (SIGNING,)) if k in live]
            older = [k for k in concerned if live[k].not_before < e.occurred_at]
            targets = [(live.pop(k), rule.reason) for k in older] if rule.revokes else []
            if any(cascades(c.kind) for c, _ in targets) and SIGNING in live:
                # The authentication certificate revoked => the signing certificate too, however new.
                targets.append((live.pop(SIGNING), cascade_reason(rule.reason)))
            if concerned and not older:
                out[e.seq] = {"event_id": e.event_id, "outcome": "issued_after_event"}
                issued_after.append(e.event_id)
            elif targets:
                items.extend((c, reason, e.event_id, encode_entry(c.serial, now, reason)) for c, reason in targets)
                applied.append((e.event_id, None, len(targets)))
                if rule.free_reissue:
                    reissue.append((e.resident_hash, e.kind, e.event_id))
                out[e.seq] = {"event_id": e.event_id, "outcome": "applied", "revoked": len(targets)}
            elif not rule.revokes and older:
                # Municipal merger: nothing revoked, the holder may get a new certificate free.
                applied.append((e.event_id, "free_reissue", 0))
                reissue.append((e.resident_hash, e.kind, e.event_id))
                out[e.seq] = {"event_id": e.event_id, "outcome": "applied", "revoked": 0}
            else:
                out[e.seq] = {"event_id": e.event_id, "outcome": "no_certificate"}
        await residences.moved(conn, [(e.resident_hash, e.municipality_code, e.occurred_at, e.event_id)
                                      for e in new if e.municipality_code is not None])
        await rev_store.revoke_many(conn, items, at=now, source="feed", client_id=client.id)
        await feed_events.set_applied(conn, applied)
        await feed_events.set_outcome(conn, issued_after, "issued_after_event")
        await rev_store.mark_free_reissue(conn, reissue, at=now)
        return out, len(items)


OUTCOMES = ("applied", "duplicate", "no_certificate", "issued_after_event", "rejected")


def _repeat_outcome(e: FeedEvent, orig: FeedEvent | None, out: dict[int, dict], earlier: dict) -> dict:
    """An event id seen before (earlier in this batch, or stored): 'duplicate' when it says the same,
    'rejected' (event_id_conflict) when the same id says something else."""
    if orig is not None:
        same = (orig.resident_hash, orig.kind, orig.occurred_at) == (e.resident_hash, e.kind, e.occurred_at)
        original = out[orig.seq]["outcome"]
    else:
        stored = earlier[e.event_id]
        same = (stored.resident_hash, stored.kind, stored.occurred_at) == (e.resident_hash, e.kind, e.occurred_at)
        original = stored.outcome
    if same:
        return {"event_id": e.event_id, "outcome": "duplicate", "original_outcome": original}
    return {"event_id": e.event_id, "outcome": "rejected", "reason": "event_id_conflict"}
