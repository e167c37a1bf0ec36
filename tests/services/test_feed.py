"""FeedService (the resident-register feed) built from a pool, a fixed clock, the resident-hash key and
the revocation settings."""
from __future__ import annotations

import datetime as dt
import secrets

import pytest

from ca_core.clock import format_rfc3339
from ca_core.resident import resident_hash
from tests.services.support import issue_holder, revocation_rows, status, totals


def event(code: str, kind: str, clock, **over) -> dict:
    body = {"event_id": f"ev-{secrets.token_hex(8)}", "resident_code": code, "kind": kind,
            "occurred_at": format_rfc3339(clock.now() - dt.timedelta(hours=1))}
    body.update(over)
    return body


@pytest.fixture
async def holder(issuance, parts, clock):
    """A resident's pair issued at T0; the register's events of these tests happen a day later."""
    issued = await issue_holder(issuance, parts)
    clock.advance(days=1)
    return issued


async def test_moved_revokes_only_the_signing_certificate(feed, parts, clock, holder):
    ev = event(holder.code, "moved", clock)
    answer = await feed.apply(parts.feed, [ev])
    assert answer["results"] == [{"event_id": ev["event_id"], "outcome": "applied", "revoked": 1}]
    assert {k: n for k, n in answer["summary"].items() if n} == {"applied": 1}
    assert await status(parts, holder.serial("signing")) == "revoked"
    assert await status(parts, holder.serial("auth")) == "valid"
    rows = await revocation_rows(parts, holder.serial("signing"))
    assert [(r["reason"], r["source"], r["source_ref"], r["revoked_at"]) for r in rows] == \
        [(3, "feed", ev["event_id"], clock.now())]  # affiliationChanged
    assert await revocation_rows(parts, holder.serial("auth")) == []


async def test_a_resent_event_is_a_duplicate_and_changes_nothing(feed, parts, clock, holder):
    ev = event(holder.code, "moved", clock)
    await feed.apply(parts.feed, [ev])
    rows = await totals(parts)
    revocations = await revocation_rows(parts, holder.serial("signing"))
    clock.advance(minutes=5)
    answer = await feed.apply(parts.feed, [ev])
    assert answer["results"] == [{"event_id": ev["event_id"], "outcome": "duplicate", "original_outcome": "applied"}]
    assert answer["summary"]["duplicate"] == 1
    assert await revocation_rows(parts, holder.serial("signing")) == revocations
    after = await totals(parts)
    assert after["audit_log"] == rows["audit_log"] + 1  # the chunk's audit record, nothing else
    assert {k: v for k, v in after.items() if k != "audit_log"} == {k: v for k, v in rows.items() if k != "audit_log"}


async def test_same_event_id_saying_something_else_is_rejected(feed, parts, clock, holder):
    ev = event(holder.code, "moved", clock)
    await feed.apply(parts.feed, [ev])
    answer = await feed.apply(parts.feed, [dict(ev, kind="died")])
    assert answer["results"] == [{"event_id": ev["event_id"], "outcome": "rejected", "reason": "event_id_conflict"}]
    assert await status(parts, holder.serial("auth")) == "valid"


async def test_an_unknown_kind_is_rejected_and_not_recorded(feed, parts, clock, holder):
    ev = event(holder.code, "promoted", clock)
    rows = await totals(parts)
    answer = await feed.apply(parts.feed, [ev])
    assert answer["results"] == [{"event_id": ev["event_id"], "outcome": "rejected", "reason": "unknown_kind"}]
    assert answer["summary"]["rejected"] == 1
    assert await status(parts, holder.serial("signing")) == "valid"
    assert await status(parts, holder.serial("auth")) == "valid"
    after = await totals(parts)
    assert after["feed_event"] == rows["feed_event"] and after["revocation"] == rows["revocation"]


async def test_a_municipal_merger_revokes_nothing_and_grants_a_free_reissue(feed, parts, clock, holder):
    ev = event(holder.code, "municipal_merger", clock)
    rows = await totals(parts)
    answer = await feed.apply(parts.feed, [ev])
    assert answer["results"] == [{"event_id": ev["event_id"], "outcome": "applied", "revoked": 0}]
    assert await status(parts, holder.serial("signing")) == "valid"
    assert await status(parts, holder.serial("auth")) == "valid"
    assert (await totals(parts))["revocation"] == rows["revocation"]
    async with parts.pool.acquire() as conn:
        grants = await conn.fetch("SELECT cause, source_ref FROM free_reissue WHERE resident_hash = $1",
                                  resident_hash(parts.resident_key, holder.code))
    assert [(g["cause"], g["source_ref"]) for g in grants] == [("municipal_merger", ev["event_id"])]


async def test_died_revokes_both_and_an_unknown_resident_has_no_certificate(feed, parts, clock, holder):
    died = event(holder.code, "died", clock)
    nobody = event("".join(secrets.choice("0123456789") for _ in range(11)), "moved", clock)
    future = event(holder.code, "moved", clock, occurred_at=format_rfc3339(clock.now() + dt.timedelta(days=2)))
    answer = await feed.apply(parts.feed, [died, nobody, future])
    assert [r["outcome"] for r in answer["results"]] == ["applied", "no_certificate", "rejected"]
    assert answer["results"][0]["revoked"] == 2
    assert answer["results"][2]["reason"] == "occurred_at_in_future"
    for kind in ("signing", "auth"):
        assert await status(parts, holder.serial(kind)) == "revoked"
        assert [r["reason"] for r in await revocation_rows(parts, holder.serial(kind))] == [5]


async def test_a_batch_of_several_chunks_is_backlog_until_applied(parts, clock, holder):
    """While a batch of several transactions waits (here: status changes held by an operator), the
    status page's backlog shows it with its events; once applied, nothing waits and the events count."""
    import asyncio
    import uuid

    from revocation.feed import FeedService
    from storage import feed_events, revocations

    settings = parts.cfg.revocation.replace(feed_chunk_events=2)
    feed = FeedService(pool=parts.pool, clock=clock, resident_key=parts.resident_key, settings=settings)
    events = [event(holder.code, "moved", clock)] + [event(f"{n:011d}", "died", clock) for n in range(4)]
    stalled = dt.timedelta(minutes=10)
    async with parts.pool.acquire() as lock:
        await revocations.hold_status_changes(lock)
        task = asyncio.create_task(feed.apply(parts.feed, events))
        try:
            for _ in range(200):
                async with parts.pool.acquire() as conn:
                    seen = await feed_events.backlog(conn, clock.now(), stalled)
                if seen.batches:
                    break
                await asyncio.sleep(0.02)
            assert (seen.batches, seen.waiting, seen.stalled) == (1, 5, 0)
        finally:
            await revocations.allow_status_changes(lock)
    answer = await task
    assert answer["summary"]["applied"] == 1 and answer["summary"]["no_certificate"] == 4
    async with parts.pool.acquire() as conn:
        after = await feed_events.backlog(conn, clock.now(), stalled)
    assert (after.batches, after.waiting, after.stalled) == (0, 0, 0)
    assert after.last_applied_at == clock.now()
    assert after.last_day.get("applied", 0) >= 1 and after.last_day.get("no_certificate", 0) >= 4
    # A batch cut off (its row left behind, not advanced) shows as stalled once its time has passed.
    async with parts.pool.acquire() as conn:
        cut = uuid.uuid4()
        await feed_events.batch_started(conn, cut, parts.feed.id, 7, clock.now())
        assert (await feed_events.backlog(conn, clock.now(), stalled)).waiting == 7
        late = await feed_events.backlog(conn, clock.now() + stalled + dt.timedelta(seconds=1), stalled)
        assert (late.batches, late.waiting, late.stalled) == (0, 0, 1)
        await feed_events.batch_done(conn, cut)
