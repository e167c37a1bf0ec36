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
import re
import time
from collections import Counter as Tally, defaultdict
from dataclasses import dataclass

import asyncpg
from prometheus_client import Counter, Histogram

from ca_core.clock import parse_rfc3339
from ca_core import errors
from ca_core.lifecycle import FEED_RULES
from ca_core.revocation import encode_entry
from ca_core.resident import resident_hash
from storage import audit, feed_events, revocations as rev_store

log = logging.getLogger(__name__)

FEED_EVENTS = Counter("shomei_feed_events_total", "Resident-register feed events by outcome", ["outcome"])
FEED_BATCH = Histogram("shomei_feed_batch_seconds", "Time to apply a feed batch",
                       buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120))

_EVENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_FIELDS = {"event_id", "resident_code", "kind", "occurred_at"}
MAX_FUTURE = dt.timedelta(days=1)


@dataclass(frozen=True)
class FeedEvent:
    seq: int
    event_id: str
    resident_hash: bytes
    kind: str
    occurred_at: dt.datetime


class Rejected(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def parse_event(raw, seq: int, key: bytes, now: dt.datetime) -> FeedEvent:
    """Check one event; raises Rejected(reason) naming what is wrong (the event is not recorded)."""
    if not isinstance(raw, dict):
        raise Rejected("not_an_object")
    extra = set(raw) - _FIELDS
    if extra:
        raise Rejected(f"unknown_field:{sorted(extra)[0]}")
    missing = _FIELDS - set(raw)
    if missing:
        raise Rejected(f"missing_field:{sorted(missing)[0]}")
    event_id = raw["event_id"]
    if not isinstance(event_id, str) or not _EVENT_ID.match(event_id):
        raise Rejected("invalid_event_id")
    code = raw["resident_code"]
    if not isinstance(code, str) or len(code) != 11 or not code.isascii() or not code.isdigit():
        raise Rejected("invalid_resident_code")
    kind = raw["kind"]
    if not isinstance(kind, str) or kind not in FEED_RULES:
        raise Rejected("unknown_kind")
    try:
        occurred_at = parse_rfc3339(raw["occurred_at"])
    except ValueError:
        raise Rejected("invalid_occurred_at") from None
    if occurred_at > now + MAX_FUTURE:
        raise Rejected("occurred_at_in_future")
    return FeedEvent(seq, event_id, resident_hash(key, code), kind, occurred_at)


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
    def __init__(self, rt):
        self.rt = rt

    async def apply(self, client, raw_events: list) -> dict:
        """Apply a batch; returns {"results": [...], "summary": {...}} with one result per event, in order."""
        started = time.perf_counter()
        rt = self.rt
        now = rt.clock.now()
        results: list[dict | None] = [None] * len(raw_events)
        parsed: list[FeedEvent] = []
        for i, raw in enumerate(raw_events):
            try:
                parsed.append(parse_event(raw, i, rt.resident_key, now))
            except Rejected as exc:
                eid = raw.get("event_id") if isinstance(raw, dict) and isinstance(raw.get("event_id"), str) else None
                results[i] = {"event_id": eid, "outcome": "rejected", "reason": exc.reason}
        size = rt.cfg.revocation.feed_chunk_events
        for start in range(0, len(parsed), size):
            chunk = parsed[start:start + size]
            try:
                for seq, result in (await self._apply_chunk(client, chunk, now)).items():
                    results[seq] = result
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
                raise errors.Unavailable("the database is unavailable; events up to "
                                         f"{chunk[0].event_id} were applied, resend the batch") from None
            except asyncpg.DeadlockDetectedError:
                raise errors.Unavailable("concurrent changes; resend the batch (applied events are answered "
                                         "duplicate)", code="concurrent_change", retry_after=1) from None
        summary = Tally(r["outcome"] for r in results)
        for outcome, n in summary.items():
            FEED_EVENTS.labels(outcome).inc(n)
        FEED_BATCH.observe(time.perf_counter() - started)
        return {"results": results, "summary": {k: summary.get(k, 0) for k in
                                                ("applied", "duplicate", "no_certificate", "rejected")}}

    async def _apply_chunk(self, client, chunk: list[FeedEvent], now: dt.datetime) -> dict[int, dict]:
        out: dict[int, dict] = {}
        async with self.rt.pool.acquire() as conn:
            async with conn.transaction():
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
                earlier = await feed_events.stored(conn, {e.event_id for e in repeats} - claimed)

                by_resident: dict[bytes, dict] = defaultdict(dict)
                for cert in await feed_events.live_certificates(conn, {e.resident_hash for e in new}):
                    by_resident[cert.resident_hash][cert.kind] = cert
                items, applied, reissue = [], [], []
                for e in new:  # in batch order: an earlier event of a resident takes the certificate first
                    rule = FEED_RULES[e.kind]
                    live = by_resident.get(e.resident_hash, {})
                    targets = [live.pop(k) for k in rule.revokes if k in live]
                    if targets:
                        items.extend((c, rule.reason, e.event_id, encode_entry(c.serial, now, rule.reason))
                                     for c in targets)
                        applied.append((e.event_id, None, len(targets)))
                        if rule.free_reissue:
                            reissue.append((e.resident_hash, e.kind, e.event_id))
                        out[e.seq] = {"event_id": e.event_id, "outcome": "applied", "revoked": len(targets)}
                    elif not rule.revokes and "signing" in live:
                        # Municipal merger: nothing revoked, the holder may get a new certificate free.
                        applied.append((e.event_id, "free_reissue", 0))
                        reissue.append((e.resident_hash, e.kind, e.event_id))
                        out[e.seq] = {"event_id": e.event_id, "outcome": "applied", "revoked": 0}
                    else:
                        out[e.seq] = {"event_id": e.event_id, "outcome": "no_certificate"}
                await rev_store.revoke_many(conn, items, at=now, source="feed", client_id=client.id)
                await feed_events.set_applied(conn, applied)
                await rev_store.mark_free_reissue(conn, reissue, at=now)
                for e in repeats:
                    orig = first.get(e.event_id)
                    if orig is not None:
                        same = (orig.resident_hash, orig.kind, orig.occurred_at) == (e.resident_hash, e.kind,
                                                                                   e.occurred_at)
                        original = out[orig.seq]["outcome"]
                    else:
                        s = earlier[e.event_id]
                        same = (s.resident_hash, s.kind, s.occurred_at) == (e.resident_hash, e.kind, e.occurred_at)
                        original = s.outcome
                    out[e.seq] = ({"event_id": e.event_id, "outcome": "duplicate", "original_outcome": original}
                                  if same else {"event_id": e.event_id, "outcome": "rejected",
                                                "reason": "event_id_conflict"})
                counts = Tally(r["outcome"] for r in out.values())
                await audit.record(conn, action="feed_chunk", client_id=client.id,
                                   details={"events": len(chunk), "revoked": len(items), **counts})
        return out
