"""The online window over HTTP: CMS applications, each check of docs/domain.md (online window) with its
code, hostile input."""
from __future__ import annotations

import datetime as dt
import os
import secrets

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ca_core.clock import FixedClock
from crl_publisher.publisher import activate_pending
from revocation import online_client
from tests.integration.revocation_support import APPLICANT, in_force, new_holder, post, rid, rows_of, status_of

CT = {"Content-Type": "application/pkcs7-mime"}
REVOKE, CHECK = "/v1/online/revocations", "/v1/online/validity-checks"


async def send(http, path, der, headers=CT):
    resp = await http.post(path, data=der, headers=headers)
    return resp.status, await resp.json(), resp.headers


async def pending(rt, serial):
    async with rt.pool.acquire() as conn:
        return await conn.fetchrow("SELECT * FROM revocation WHERE serial = $1 AND effective_at IS NULL"
                                   " AND released_at IS NULL", serial.to_bytes(16, "big"))


async def activate(rt):
    async with rt.pool.acquire() as conn, conn.transaction():
        return await activate_pending(conn, rt.clock.now())


async def unchanged(rt, h, *, nonce_free=None):
    """Nothing recorded for the holder: statuses valid, no revocation row, nonce unused."""
    for kind in h.certs:
        assert await status_of(rt, h.serial(kind)) == "valid"
        assert await rows_of(rt, h.serial(kind)) == []
    async with rt.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM online_nonce WHERE serial = ANY($1::bytea[])",
                                   [h.serial(k).to_bytes(16, "big") for k in h.certs]) == 0


@pytest.fixture
async def holder(http, terminal, keys):
    return await new_holder(http, terminal, keys)


async def test_validity_check_valid(http, rt, holder):
    st, body, _ = await send(http, CHECK, holder.application("auth", "validity_check"))
    assert st == 200 and body["result"] == "valid" and body["serial"] == format(holder.serial("auth"), "032x")


async def test_online_revocation_accepted_then_effective_at_next_crl(http, rt, holder):
    st, body, _ = await send(http, REVOKE, holder.application("signing", "revocation"))
    assert st == 202 and body["status"] == "accepted", body
    assert [c["kind"] for c in body["certificates"]] == ["signing"]
    # Accepted, not yet effective: status unchanged, OCSP/CRL see nothing in force.
    assert await status_of(rt, holder.serial("signing")) == "valid"
    assert await in_force(rt, holder.serial("signing")) is None
    row = await pending(rt, holder.serial("signing"))
    assert row["source"] == "online" and row["reason"] == 5
    st, body, _ = await send(http, CHECK, holder.application("signing", "validity_check"))
    assert body["result"] == "revocation_accepted"
    st, body, _ = await send(http, REVOKE, holder.application("signing", "revocation"))
    assert st == 409 and body["error"]["code"] == "already_requested" and "二重の失効申請" in body["error"]["message_ja"]
    assert await activate(rt) >= 1
    assert await status_of(rt, holder.serial("signing")) == "revoked"
    assert (await in_force(rt, holder.serial("signing")))["source"] == "online"
    st, body, _ = await send(http, CHECK, holder.application("signing", "validity_check"))
    assert body["result"] == "revoked"
    st, body, _ = await send(http, REVOKE, holder.application("signing", "revocation"))
    assert st == 409 and body["error"]["code"] == "already_revoked" and body["error"]["message_ja"].startswith("失効済")
    assert await status_of(rt, holder.serial("auth")) == "valid"


async def test_online_auth_revocation_takes_signing_too(http, rt, holder):
    st, body, _ = await send(http, REVOKE, holder.application("auth", "revocation"))
    assert st == 202 and {c["kind"] for c in body["certificates"]} == {"auth", "signing"}
    assert await pending(rt, holder.serial("signing")) is not None
    await activate(rt)
    assert await status_of(rt, holder.serial("signing")) == "revoked"
    assert await status_of(rt, holder.serial("auth")) == "revoked"


async def test_held_certificate_checks_revoked_and_online_revocation_ends_hold(http, terminal, rt, holder):
    assert (await post(http, "/v1/holds", terminal, {"request_id": rid(), "serial": holder.hex("auth")}))[0] == 201
    st, body, _ = await send(http, CHECK, holder.application("auth", "validity_check"))
    assert body["result"] == "revoked" and body["reason"] == "certificate_hold"
    st, body, _ = await send(http, REVOKE, holder.application("auth", "revocation"))
    assert st == 202
    assert (await in_force(rt, holder.serial("auth")))["reason"] == 6  # the hold stays until effective
    await activate(rt)
    hold, rev = await rows_of(rt, holder.serial("auth"))
    assert hold["release_kind"] == "hold_revoked" and rev["reason"] == 5 and rev["effective_at"] is not None


async def test_window_revocation_replaces_pending_online_one(http, terminal, rt, holder):
    assert (await send(http, REVOKE, holder.application("signing", "revocation")))[0] == 202
    st, _ = await post(http, "/v1/revocations", terminal,
                       {"request_id": rid(), "serial": holder.hex("signing"), "reason": "key_compromise"})
    assert st == 201
    online_row, window_row = await rows_of(rt, holder.serial("signing"))
    assert online_row["release_kind"] == "pending_replaced" and online_row["effective_at"] is None
    assert window_row["reason"] == 1 and window_row["released_at"] is None


async def test_replayed_nonce(http, rt, holder):
    der = holder.application("auth", "validity_check")
    assert (await send(http, CHECK, der))[0] == 200
    st, body, _ = await send(http, CHECK, der)
    assert st == 409 and body["error"]["code"] == "replayed" and body["error"]["message_ja"]
    nonce = secrets.token_bytes(16)
    assert (await send(http, CHECK, holder.application("auth", "validity_check", nonce=nonce)))[0] == 200
    st, body, _ = await send(http, REVOKE, holder.application("auth", "revocation", nonce=nonce))
    assert st == 409 and body["error"]["code"] == "replayed"
    assert await pending(rt, holder.serial("auth")) is None


@pytest.mark.parametrize("minutes", [-11, 11])
async def test_stale_issued_at(http, rt, holder, minutes):
    at = rt.clock.now() + dt.timedelta(minutes=minutes)
    st, body, _ = await send(http, REVOKE, holder.application("auth", "revocation", issued_at=at))
    assert st == 422 and body["error"]["code"] == "stale" and body["error"]["field"] == "issued_at"
    await unchanged(rt, holder)
    st, body, _ = await send(http, REVOKE, holder.application("auth", "revocation",
                                                           issued_at=rt.clock.now() - dt.timedelta(minutes=9)))
    assert st == 202


async def test_serial_must_be_the_signing_certificate(http, rt, holder):
    der = holder.application("auth", "revocation", serial=holder.serial("signing"))
    st, body, _ = await send(http, REVOKE, der)
    assert st == 422 and body["error"]["code"] == "serial_mismatch"
    await unchanged(rt, holder)


async def test_application_signature_invalid(http, rt, holder, keys):
    other = keys.new()
    der = online_client.build("revocation", holder.der("auth"), online_client.key_signer(other), APPLICANT)
    st, body, _ = await send(http, REVOKE, der)
    assert st == 422 and body["error"]["code"] == "application_signature_invalid"
    assert body["error"]["message_ja"].startswith("失効申請書の検証エラー")
    st, body, _ = await send(http, CHECK, online_client.build("validity_check", holder.der("auth"),
                                                              online_client.key_signer(other), APPLICANT))
    assert body["error"]["message_ja"].startswith("有効性確認申請書の検証エラー")
    # messageDigest not matching the content: signature over the attributes is valid, content swapped.
    good = cms.ContentInfo.load(holder.application("auth", "revocation"))
    content = online_client.document("revocation", holder.serial("auth"), APPLICANT)
    good["content"]["encap_content_info"]["content"] = content
    st, body, _ = await send(http, REVOKE, good.dump(force=True))
    assert st == 422 and body["error"]["code"] == "application_signature_invalid"
    await unchanged(rt, holder)


async def test_without_signed_attributes(http, rt, holder):
    content = online_client.document("validity_check", holder.serial("auth"), APPLICANT)
    der = online_client.signed_data(content, holder.der("auth"), online_client.key_signer(holder.keys["auth"]),
                                    signed_attrs=False)
    st, body, _ = await send(http, CHECK, der)
    assert st == 200 and body["result"] == "valid"


def _card_cert(issuer_name, issuer_key, subject_key, aki: bytes, days=365):
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
            .issuer_name(issuer_name).public_key(subject_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.AuthorityKeyIdentifier(aki, None, None), critical=False)
            .sign(issuer_key, hashes.SHA256()))


async def test_unknown_issuer(http, rt, keys):
    fake_ca, card = keys.new(), keys.new()
    cert = _card_cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Other CA")]), fake_ca, card,
                      os.urandom(20))
    der = online_client.build("revocation", cert.public_bytes(Encoding.DER), online_client.key_signer(card),
                              APPLICANT)
    st, body, _ = await send(http, REVOKE, der)
    assert st == 422 and body["error"]["code"] == "unknown_issuer" and body["error"]["message_ja"]


async def test_certificate_signature_invalid(http, rt, keys):
    ours = x509.load_der_x509_certificate(rt.issuers.current("auth").certificate_der)
    fake_key, card = keys.new(), keys.new()
    cert = _card_cert(ours.subject, fake_key, card, rt.issuers.current("auth").key_id)
    der = online_client.build("revocation", cert.public_bytes(Encoding.DER), online_client.key_signer(card),
                              APPLICANT)
    st, body, _ = await send(http, REVOKE, der)
    assert st == 422 and body["error"]["code"] == "certificate_signature_invalid"


async def test_certificate_expired(http, rt, holder):
    from revocation.http import ENDPOINTS

    window = http.app[ENDPOINTS].online_window  # the service runs on the clock it was built with
    saved = window.clock
    later = saved.now() + dt.timedelta(days=365 * 30)
    window.clock = FixedClock(later)
    try:
        for path, proc in ((REVOKE, "revocation"), (CHECK, "validity_check")):
            st, body, _ = await send(http, path, holder.application("auth", proc, issued_at=later))
            assert st == 422 and body["error"]["code"] == "certificate_expired"
            assert body["error"]["message_ja"].startswith("有効期限切れ")
    finally:
        window.clock = saved
    await unchanged(rt, holder)


async def test_busy_answers_503_with_retry_after(http, rt, holder):
    from revocation.http import ENDPOINTS

    window = http.app[ENDPOINTS].online_window
    saved = window.in_flight
    window.in_flight = rt.cfg.revocation.online_max_in_flight
    try:
        st, body, headers = await send(http, REVOKE, holder.application("auth", "revocation"))
    finally:
        window.in_flight = saved
    assert st == 503 and body["error"]["code"] == "busy" and int(headers["Retry-After"]) > 0
    assert body["error"]["message_ja"].startswith("混雑")
    await unchanged(rt, holder)


async def test_internal_error_records_nothing(http, rt, holder, monkeypatch):
    from storage import online_nonces

    async def broken(conn, nonce, result):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(online_nonces, "set_result", broken)
    st, body, _ = await send(http, REVOKE, holder.application("auth", "revocation"))
    assert st == 500 and body["error"]["code"] == "internal_error" and body["error"]["message_ja"]
    await unchanged(rt, holder)


# -- hostile input: always 4xx and nothing recorded -----------------------------------------------

def _variants(holder):
    der = holder.application("auth", "revocation")
    yield "empty", b""
    yield "truncated", der[: len(der) // 2]
    yield "one byte short", der[:-1]
    yield "trailing garbage", der + b"\x00"
    yield "random", os.urandom(2000)
    yield "random with SEQUENCE header", b"\x30\x82\x07\xd0" + os.urandom(2000)
    yield "deep nesting", b"\x30\x80" * 5000
    yield "huge length", b"\x30\x84\xff\xff\xff\xff" + der
    ci = cms.ContentInfo.load(der)
    sd = ci["content"]
    two = cms.ContentInfo.load(der)
    two["content"]["signer_infos"] = [sd["signer_infos"][0], sd["signer_infos"][0]]
    yield "two signers", two.dump(force=True)
    none = cms.ContentInfo.load(der)
    none["content"]["certificates"] = []
    yield "no certificate", none.dump(force=True)
    absent = cms.ContentInfo.load(der)
    del absent["content"]["certificates"]
    yield "certificates absent", absent.dump(force=True)
    nosigner = cms.ContentInfo.load(der)
    nosigner["content"]["signer_infos"] = []
    yield "no signer", nosigner.dump(force=True)
    detached = cms.ContentInfo.load(der)
    detached["content"]["encap_content_info"] = {"content_type": "data"}
    yield "detached content", detached.dump(force=True)
    wrongtype = cms.ContentInfo.load(der)
    wrongtype["content"]["encap_content_info"]["content_type"] = "signed_data"
    yield "eContentType", wrongtype.dump(force=True)
    enveloped = cms.ContentInfo({"content_type": "data", "content": b"hello"}).dump()
    yield "not signed data", enveloped
    sign = online_client.key_signer(holder.keys["auth"])
    for name, content in (("not JSON", b"\xff\xfe not json"), ("JSON list", b"[]"),
                          ("extra field", b'{"procedure": "revocation", "x": 1}')):
        yield name, online_client.signed_data(content, holder.der("auth"), sign)
    base = dict(procedure="revocation", serial=format(holder.serial("auth"), "x"),
                issued_at=dt.datetime.now(dt.timezone.utc).isoformat(), nonce="AAAAAAAAAAAAAAAAAAAAAA==",
                applicant=APPLICANT)
    import json
    for field, value in (("nonce", "AAAA"), ("nonce", "not base64!"), ("serial", "zz"), ("issued_at", "now"),
                         ("issued_at", "2025-01-01T00:00:00"), ("procedure", "validity_check"),
                         ("applicant", {"name": "x"})):
        content = json.dumps({**base, field: value}).encode()
        yield f"bad {field}", online_client.signed_data(content, holder.der("auth"), sign)
    dup = ('{"procedure": "revocation", "procedure": "revocation", "serial": "1", "issued_at": "x", "nonce": "x",'
           ' "applicant": {}}').encode()
    yield "duplicate keys", online_client.signed_data(dup, holder.der("auth"), sign)


async def test_hostile_der_is_malformed_and_changes_nothing(http, rt, holder):
    for name, der in _variants(holder):
        st, body, _ = await send(http, REVOKE, der)
        assert st == 400 and body["error"]["code"] == "malformed", (name, st, body)
        assert body["error"]["message_ja"].startswith("受信データの形式エラー"), name
    await unchanged(rt, holder)


async def test_wrong_content_type_and_huge_body(http, rt, holder):
    der = holder.application("auth", "revocation")
    for ctype in ("application/json", "text/plain", "application/octet-stream"):
        st, body, _ = await send(http, REVOKE, der, headers={"Content-Type": ctype})
        assert st == 415 and body["error"]["code"] == "unsupported_media_type" and body["error"]["message_ja"]
    resp = await http.post(REVOKE, data=der)  # no Content-Type at all
    assert resp.status == 415
    huge = der + os.urandom(rt.cfg.revocation.online_max_body_bytes)
    st, body, _ = await send(http, REVOKE, huge)
    assert st == 413 and body["error"]["code"] == "payload_too_large" and body["error"]["message_ja"]

    async def chunks():  # no Content-Length: the limit still holds while streaming
        for _ in range(64):
            yield os.urandom(1024)

    resp = await http.post(REVOKE, data=chunks(), headers=CT)
    assert resp.status == 413
    await unchanged(rt, holder)
