"""Resident-register feed (住基連携) over HTTP: the rules table, idempotency by event id, hostile input."""
from __future__ import annotations

import datetime as dt

import json
import secrets

import pytest

from tests.helpers import resident_code
from tests.integration.revocation_support import in_force, new_holder, post, rhash, rid, rows_of, status_of

def now_iso() -> str:
    """A second from now: after the certificates the test issued (an event applies only to older ones)."""
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)).replace(microsecond=0).isoformat()


def ev(code, kind, event_id=None, occurred_at=None):
    """An event that occurred now (after the test's certificates were issued)."""
    return {"event_id": event_id or "ev-" + secrets.token_hex(8), "resident_code": code, "kind": kind,
            "occurred_at": occurred_at or now_iso()}


async def send(http, credential, events, **kw):
    resp = await http.post("/v1/residency-events", json={"events": events}, ssl=credential.ssl, **kw)
    return resp.status, await resp.json()


@pytest.mark.parametrize("kind", ["moved", "name_changed", "birth_date_corrected", "sex_corrected"])
async def test_basic4_change_revokes_signing_only(http, terminal, feed, keys, rt, kind):
    h = await new_holder(http, terminal, keys)
    e = ev(h.code, kind)
    st, body = await send(http, feed, [e])
    assert st == 200, body
    assert body["results"] == [{"event_id": e["event_id"], "outcome": "applied", "revoked": 1}]
    row = await in_force(rt, h.serial("signing"))
    assert row["reason"] == 3 and row["source"] == "feed" and row["source_ref"] == e["event_id"]
    assert await status_of(rt, h.serial("signing")) == "revoked"
    assert await status_of(rt, h.serial("auth")) == "valid"


async def test_address_notation_change_revokes_signing_and_marks_free_reissue(http, terminal, feed, keys, rt):
    h = await new_holder(http, terminal, keys)
    st, body = await send(http, feed, [ev(h.code, "address_notation_changed")])
    assert body["results"][0]["outcome"] == "applied"
    assert (await in_force(rt, h.serial("signing")))["reason"] == 3
    assert await status_of(rt, h.serial("auth")) == "valid"
    async with rt.pool.acquire() as conn:
        assert await conn.fetchval("SELECT cause FROM free_reissue WHERE resident_hash = $1",
                                   rhash(rt, h.code)) == "address_notation_changed"


async def test_municipal_merger_revokes_nothing(http, terminal, feed, keys, rt):
    h = await new_holder(http, terminal, keys)
    st, body = await send(http, feed, [ev(h.code, "municipal_merger")])
    assert body["results"][0] == {"event_id": body["results"][0]["event_id"], "outcome": "applied", "revoked": 0}
    assert await status_of(rt, h.serial("signing")) == "valid" and await status_of(rt, h.serial("auth")) == "valid"
    assert await rows_of(rt, h.serial("signing")) == []
    async with rt.pool.acquire() as conn:
        assert await conn.fetchval("SELECT cause FROM free_reissue WHERE resident_hash = $1",
                                   rhash(rt, h.code)) == "municipal_merger"


@pytest.mark.parametrize("kind", ["died", "emigrated", "record_deleted"])
async def test_end_of_residence_revokes_both(http, terminal, feed, keys, rt, kind):
    h = await new_holder(http, terminal, keys)
    st, body = await send(http, feed, [ev(h.code, kind)])
    assert body["results"][0]["revoked"] == 2
    for k in ("signing", "auth"):
        assert (await in_force(rt, h.serial(k)))["reason"] == 5
        assert await status_of(rt, h.serial(k)) == "revoked"


async def test_feed_revocation_ends_a_hold(http, terminal, feed, keys, rt):
    h = await new_holder(http, terminal, keys)
    assert (await post(http, "/v1/holds", terminal, {"request_id": rid(), "resident_code": h.code}))[0] == 201
    await send(http, feed, [ev(h.code, "died")])
    for k in ("signing", "auth"):
        hold, rev = await rows_of(rt, h.serial(k))
        assert hold["release_kind"] == "hold_revoked" and rev["reason"] == 5 and rev["released_at"] is None


async def test_events_in_order_no_certificate_and_resend_is_duplicate(http, terminal, feed, keys, rt):
    h = await new_holder(http, terminal, keys)
    events = [ev(h.code, "moved"), ev(h.code, "name_changed"), ev(h.code, "died"), ev(resident_code(), "died")]
    st, body = await send(http, feed, events)
    assert [r["outcome"] for r in body["results"]] == ["applied", "no_certificate", "applied", "no_certificate"]
    assert [r.get("revoked") for r in body["results"]] == [1, None, 1, None]
    assert (await in_force(rt, h.serial("signing")))["source_ref"] == events[0]["event_id"]
    assert (await in_force(rt, h.serial("auth")))["source_ref"] == events[2]["event_id"]
    assert body["summary"] == {"applied": 2, "duplicate": 0, "no_certificate": 2, "issued_after_event": 0,
                               "rejected": 0}
    st, again = await send(http, feed, events)
    assert [r["outcome"] for r in again["results"]] == ["duplicate"] * 4
    assert [r["original_outcome"] for r in again["results"]] == ["applied", "no_certificate", "applied",
                                                                 "no_certificate"]
    assert len(await rows_of(rt, h.serial("signing"))) == 1 and len(await rows_of(rt, h.serial("auth"))) == 1


async def test_duplicate_inside_batch_and_event_id_conflict(http, terminal, feed, keys, rt):
    h = await new_holder(http, terminal, keys)
    e = ev(h.code, "moved")
    st, body = await send(http, feed, [e, e, {**e, "kind": "died"}])
    assert [r["outcome"] for r in body["results"]] == ["applied", "duplicate", "rejected"]
    assert body["results"][2]["reason"] == "event_id_conflict"
    st, body = await send(http, feed, [{**e, "kind": "died"}])
    assert body["results"][0] == {"event_id": e["event_id"], "outcome": "rejected", "reason": "event_id_conflict"}
    assert await status_of(rt, h.serial("auth")) == "valid"


async def test_rejected_events_change_nothing_and_are_not_recorded(http, terminal, feed, keys, rt):
    h = await new_holder(http, terminal, keys)
    good = ev(h.code, "died")
    bad = [
        ({**good, "kind": "abducted"}, "unknown_kind"),
        ({**good, "resident_code": "12345"}, "invalid_resident_code"),
        ({**good, "occurred_at": "yesterday"}, "invalid_occurred_at"),
        ({**good, "occurred_at": "2025-01-01T00:00:00"}, "invalid_occurred_at"),
        ({**good, "occurred_at": "2999-01-01T00:00:00Z"}, "occurred_at_in_future"),
        ({**good, "extra": 1}, "unknown_field:extra"),
        ({k: v for k, v in good.items() if k != "kind"}, "missing_field:kind"),
        ({**good, "event_id": "a b"}, "invalid_event_id"),
        ("not an object", "not_an_object"),
    ]
    st, body = await send(http, feed, [b for b, _ in bad])
    assert st == 200
    assert [(r["outcome"], r["reason"]) for r in body["results"]] == [("rejected", reason) for _, reason in bad]
    assert await status_of(rt, h.serial("signing")) == "valid" and await status_of(rt, h.serial("auth")) == "valid"
    async with rt.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM feed_event WHERE event_id = $1", good["event_id"]) == 0
    # The fixed event with the same id is then applied.
    st, body = await send(http, feed, [good])
    assert body["results"][0]["outcome"] == "applied"


async def test_feed_credential_required(http, public, terminal, feed, keys, rt):
    h = await new_holder(http, terminal, keys)
    e = ev(h.code, "died")
    st, body = await send(http, terminal, [e])
    assert st == 403 and body["error"]["code"] == "wrong_client_kind"
    resp = await public.post("/v1/residency-events", json={"events": [e]})  # not served there at all
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "private_listener_only"
    assert await status_of(rt, h.serial("signing")) == "valid"
    assert await status_of(rt, h.serial("auth")) == "valid"


async def test_batch_shape_errors_are_4xx(http, terminal, feed, keys, rt):
    for data, ctype, code in ((b"{", "application/json", "malformed_json"),
                              (b'{"events": []}', "application/json", "empty_batch"),
                              (b'[{"event_id": "x"}]', "application/json", "invalid_batch"),
                              (b'{"events": {}}', "application/json", "invalid_batch"),
                              (b"\xff\xfe", "application/x-ndjson", "malformed_json"),
                              (b"{}", "text/plain", "unsupported_media_type")):
        resp = await http.post("/v1/residency-events", data=data, ssl=feed.ssl,
                               headers={"Content-Type": ctype})
        body = await resp.json()
        assert 400 <= resp.status < 500 and body["error"]["code"] == code, (data, body)


async def test_json_lines_batch(http, terminal, feed, keys, rt):
    h = await new_holder(http, terminal, keys)
    events = [ev(h.code, "moved"), ev(resident_code(), "died")]
    data = "\n".join(json.dumps(e) for e in events).encode() + b"\n"
    resp = await http.post("/v1/residency-events", data=data,
                           ssl=feed.ssl,
                           headers={"Content-Type": "application/x-ndjson"})
    body = await resp.json()
    assert resp.status == 200 and [r["outcome"] for r in body["results"]] == ["applied", "no_certificate"]
    assert await status_of(rt, h.serial("signing")) == "revoked"


async def test_every_change_is_audited(http, terminal, feed, keys, rt):
    h = await new_holder(http, terminal, keys)
    e = ev(h.code, "emigrated")
    await send(http, feed, [e])
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch("SELECT serial, details FROM audit_log WHERE action = 'revoke' AND request_id = $1",
                                e["event_id"])
    assert {int.from_bytes(r["serial"], "big") for r in rows} == {h.serial("signing"), h.serial("auth")}
    assert all(r["details"]["source"] == "feed" for r in rows)
