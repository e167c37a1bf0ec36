"""Window revocations, holds and hold releases over HTTP on the real stack (docs/domain.md, revocation
rules)."""
from __future__ import annotations

import asyncio
import datetime as dt
import json

from asn1crypto import crl as acrl

from ca_core.revocation import Reason, encode_entry
from tests.integration.revocation_support import in_force, new_holder, post, rid, rows_of, status_of


async def test_revoke_auth_by_serial_revokes_signing_too(http, terminal, keys, rt):
    h = await new_holder(http, terminal, keys)
    st, body = await post(http, "/v1/revocations", terminal,
                          {"request_id": rid(), "serial": h.hex("auth"), "reason": "holder_request"})
    assert st == 201, body
    assert {(r["kind"], r["cascade"], r["reason"]) for r in body["revoked"]} == {
        ("auth", False, "cessation_of_operation"), ("signing", True, "cessation_of_operation")}
    for kind in ("auth", "signing"):
        assert await status_of(rt, h.serial(kind)) == "revoked"
        row = await in_force(rt, h.serial(kind))
        assert row["source"] == "window" and row["reason"] == 5 and row["effective_at"] is not None
        # The CRL entry DER is stored once, decodable by a strict parser, with the right reason.
        entry = acrl.RevokedCertificate.load(bytes(row["entry_der"]), strict=True)
        assert entry["user_certificate"].native == h.serial(kind)
        assert entry.crl_reason_value.native == "cessation_of_operation"


async def test_revoke_signing_only_leaves_auth(http, terminal, keys, rt):
    h = await new_holder(http, terminal, keys)
    st, body = await post(http, "/v1/revocations", terminal,
                          {"request_id": rid(), "serial": h.hex("signing"), "reason": "card_returned"})
    assert st == 201 and [r["kind"] for r in body["revoked"]] == ["signing"]
    assert await status_of(rt, h.serial("auth")) == "valid"


async def test_key_compromise_carries_invalidity_date(http, terminal, keys, rt):
    h = await new_holder(http, terminal, keys)
    when = (rt.clock.now() - dt.timedelta(days=2)).replace(microsecond=0)
    st, body = await post(http, "/v1/revocations", terminal,
                          {"request_id": rid(), "resident_code": h.code, "kinds": ["signing", "auth"],
                           "reason": "key_compromise", "invalidity_date": when.isoformat()})
    assert st == 201, body
    rows = {r["kind"]: r for r in body["revoked"]}
    assert rows["signing"]["reason"] == "key_compromise" and rows["auth"]["reason"] == "key_compromise"
    for kind in ("signing", "auth"):
        row = await in_force(rt, h.serial(kind))
        assert row["invalidity_date"] == when and row["reason"] == 1
        assert bytes(row["entry_der"]) == encode_entry(h.serial(kind), row["revoked_at"], Reason.key_compromise, when)
        entry = acrl.RevokedCertificate.load(bytes(row["entry_der"]), strict=True)
        assert entry.invalidity_date_value.native == when


async def test_recording_error_is_unspecified_without_reason_code_and_free_reissue(http, terminal, keys, rt):
    h = await new_holder(http, terminal, keys)
    st, body = await post(http, "/v1/revocations", terminal,
                          {"request_id": rid(), "serial": h.hex("signing"), "reason": "recording_error"})
    assert st == 201 and body["free_reissue"] is True
    row = await in_force(rt, h.serial("signing"))
    assert row["reason"] == 0
    entry = acrl.RevokedCertificate.load(bytes(row["entry_der"]), strict=True)
    assert entry.crl_reason_value is None  # RFC 5280 5.3.1: absent rather than unspecified
    from tests.integration.revocation_support import rhash
    async with rt.pool.acquire() as conn:
        assert await conn.fetchval("SELECT cause FROM free_reissue WHERE resident_hash = $1",
                                   rhash(rt, h.code)) == "recording_error"


async def test_already_revoked_is_409_and_unknown_serial_404(http, terminal, keys, rt):
    h = await new_holder(http, terminal, keys, kinds=("signing",))
    assert (await post(http, "/v1/revocations", terminal,
                       {"request_id": rid(), "serial": h.hex("signing"), "reason": "death"}))[0] == 201
    st, body = await post(http, "/v1/revocations", terminal,
                          {"request_id": rid(), "serial": h.hex("signing"), "reason": "death"})
    assert st == 409 and body["error"]["code"] == "already_revoked"
    assert len(await rows_of(rt, h.serial("signing"))) == 1
    st, body = await post(http, "/v1/revocations", terminal,
                          {"request_id": rid(), "serial": "7" + "0" * 31, "reason": "death"})
    assert st == 404 and body["error"]["code"] == "unknown_serial"


async def test_revocation_is_idempotent_on_request_id(http, terminal, keys, rt):
    h = await new_holder(http, terminal, keys)
    req = {"request_id": rid(), "serial": h.hex("auth"), "reason": "holder_request"}
    first = await post(http, "/v1/revocations", terminal, req)
    again = await post(http, "/v1/revocations", terminal, req)
    assert first[0] == 201 and again[0] == 200 and again[1] == first[1]
    assert len(await rows_of(rt, h.serial("auth"))) == 1 and len(await rows_of(rt, h.serial("signing"))) == 1
    st, body = await post(http, "/v1/revocations", terminal, req | {"reason": "death"})
    assert st == 409 and body["error"]["code"] == "idempotency_conflict"
    async with rt.pool.acquire() as conn:
        n = await conn.fetchval("SELECT count(*) FROM audit_log WHERE request_id = $1 AND action = 'revoke'",
                                req["request_id"])
    assert n == 2


async def test_concurrent_same_request_id_applies_once(http, terminal, keys, rt):
    h = await new_holder(http, terminal, keys)
    req = {"request_id": rid(), "serial": h.hex("auth"), "reason": "holder_request"}
    results = await asyncio.gather(*[post(http, "/v1/revocations", terminal, req) for _ in range(5)])
    assert sorted(st for st, _ in results) == [200, 200, 200, 200, 201]
    assert len({json.dumps(b, sort_keys=True) for _, b in results}) == 1
    assert len(await rows_of(rt, h.serial("auth"))) == 1


async def test_hold_then_release_auth(http, terminal, keys, rt):
    h = await new_holder(http, terminal, keys)
    st, body = await post(http, "/v1/holds", terminal, {"request_id": rid(), "resident_code": h.code})
    assert st == 201 and {r["kind"] for r in body["held"]} == {"signing", "auth"}
    for kind in ("signing", "auth"):
        assert await status_of(rt, h.serial(kind)) == "held"
        row = await in_force(rt, h.serial(kind))
        assert row["reason"] == 6 and row["source"] == "hold"
    st, body = await post(http, "/v1/holds", terminal, {"request_id": rid(), "serial": h.hex("auth")})
    assert st == 409 and body["error"]["code"] == "already_held"
    st, body = await post(http, "/v1/holds/release", terminal, {"request_id": rid(), "serial": h.hex("auth")})
    assert st == 201 and body["released"][0]["kind"] == "auth"
    assert await status_of(rt, h.serial("auth")) == "valid"
    assert await in_force(rt, h.serial("auth")) is None
    (row,) = await rows_of(rt, h.serial("auth"))
    assert row["release_kind"] == "hold_released" and row["released_at"] is not None  # history kept
    st, body = await post(http, "/v1/holds/release", terminal, {"request_id": rid(), "serial": h.hex("auth")})
    assert st == 409 and body["error"]["code"] == "not_held"


async def test_signing_hold_cannot_be_released_and_ends_in_revocation(http, terminal, keys, rt):
    h = await new_holder(http, terminal, keys)
    assert (await post(http, "/v1/holds", terminal, {"request_id": rid(), "serial": h.hex("signing")}))[0] == 201
    st, body = await post(http, "/v1/holds/release", terminal, {"request_id": rid(), "serial": h.hex("signing")})
    assert st == 422 and body["error"]["code"] == "signing_hold_not_releasable"
    assert "/v1/revocations" in body["error"]["message"] and body["error"]["message_ja"]
    assert await status_of(rt, h.serial("signing")) == "held"
    st, body = await post(http, "/v1/holds/release", terminal,
                          {"request_id": rid(), "resident_code": h.code, "kinds": ["signing"]})
    assert st == 422 and body["error"]["code"] == "signing_hold_not_releasable"
    st, body = await post(http, "/v1/revocations", terminal,
                          {"request_id": rid(), "serial": h.hex("signing"), "reason": "holder_request"})
    assert st == 201
    hold, rev = await rows_of(rt, h.serial("signing"))
    assert hold["reason"] == 6 and hold["release_kind"] == "hold_revoked" and hold["released_at"] == rev["revoked_at"]
    assert rev["reason"] == 5 and rev["released_at"] is None
    assert await status_of(rt, h.serial("signing")) == "revoked"


async def test_hold_on_auth_does_not_cascade(http, terminal, keys, rt):
    h = await new_holder(http, terminal, keys)
    st, body = await post(http, "/v1/holds", terminal, {"request_id": rid(), "serial": h.hex("auth")})
    assert st == 201 and [r["kind"] for r in body["held"]] == ["auth"]
    assert await status_of(rt, h.serial("signing")) == "valid"


async def test_window_refuses_feed_credential_and_bad_bodies(http, public, terminal, feed, keys, rt):
    h = await new_holder(http, terminal, keys, kinds=("auth",))
    req = {"request_id": rid(), "serial": h.hex("auth"), "reason": "holder_request"}
    assert (await post(http, "/v1/revocations", feed, req))[0] == 403
    resp = await public.post("/v1/revocations", json=req, headers={"X-Operator-Id": "clerk-01"})
    assert resp.status == 404  # not served on the public listener
    for bad, code in (({**req, "reason": "bored"}, "invalid_field"), ({**req, "extra": 1}, "unknown_field"),
                      ({**req, "serial": "xyz"}, "invalid_serial"),
                      ({"request_id": rid(), "reason": "death"}, "invalid_target"),
                      ({"request_id": rid(), "resident_code": "123", "kinds": ["auth"], "reason": "death"},
                       "invalid_resident_code"),
                      ({**req, "invalidity_date": "2020-01-01T00:00:00Z"}, "invalid_invalidity_date")):
        st, body = await post(http, "/v1/revocations", terminal, bad)
        assert 400 <= st < 500 and body["error"]["code"] == code, (bad, body)
    assert await status_of(rt, h.serial("auth")) == "valid"
