"""Regression tests of the status-truth fixes: each reproduces a disagreement found between OCSP, the
CRLs and the revocation rules, and checks it can no longer happen."""
from __future__ import annotations

import dataclasses
import datetime as dt
import tempfile

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from ca_core.clock import FixedClock
from crl_publisher.publisher import Publisher, Target, activate_pending
from storage import crls
from tests.helpers import issue, issue_body
from tests.integration.revocation_support import new_holder, post, rid, status_of
from tests.ocsp_helpers import check_response, delivered, openssl_ocsp, request_der, responder

CT = {"Content-Type": "application/pkcs7-mime"}


async def _ocsp(http, cert, issuer):
    resp = await http.post("/ocsp", data=request_der(cert, issuer), headers={"Content-Type": "application/ocsp-request"})
    return check_response(await resp.read(), issuer.public_bytes(serialization.Encoding.DER))


def _issuer_of(rt, kind):
    return x509.load_der_x509_certificate(rt.issuers.current(kind).certificate_der)


async def test_hold_after_accepted_online_revocation_answers_certificate_hold(http, public, rt, terminal, keys):
    h = await new_holder(http, terminal, keys)
    issuer = _issuer_of(rt, "signing")
    resp = await http.post("/v1/online/revocations", data=h.application("signing", "revocation"), headers=CT)
    assert resp.status == 202
    since = responder().cache.seq
    st, body = await post(http, "/v1/holds", terminal, {"request_id": rid(), "serial": h.hex("signing")})
    assert st == 201, body
    await delivered(rt, h.serial("signing"), since)
    answer = await _ocsp(http, h.certs["signing"], issuer)
    assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert answer.revocation_reason == x509.ReasonFlags.certificate_hold
    # and a standard relying party says the same, over HTTP
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, cert in (("issuer", issuer), ("cert", h.certs["signing"])):
            paths[name] = f"{tmp}/{name}.pem"
            open(paths[name], "wb").write(cert.public_bytes(serialization.Encoding.PEM))
        rc, out = await openssl_ocsp("-issuer", paths["issuer"], "-cert", paths["cert"], "-url",
                                     str(public.make_url("/ocsp")), "-CAfile", paths["issuer"], "-no_nonce")
    assert rc == 0 and "Reason: certificateHold" in out, out
    # The next CRL issuance makes the online revocation effective: the hold ends in revocation.
    at = rt.clock.now() + dt.timedelta(seconds=3)
    async with rt.pool.acquire() as conn, conn.transaction():
        await activate_pending(conn, at)
    answer = await _ocsp(http, h.certs["signing"], issuer)
    assert answer.revocation_reason == x509.ReasonFlags.cessation_of_operation
    assert answer.revocation_time_utc == at


async def test_the_database_refuses_a_status_that_does_not_follow_the_revocations(http, rt, terminal, keys):
    h = await new_holder(http, terminal, keys, kinds=("auth",))
    async with rt.pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE certificate SET status = 'revoked', status_reason = 1, status_at = now()"
                               " WHERE serial = $1", h.serial("auth").to_bytes(16, "big"))
    assert await status_of(rt, h.serial("auth")) == "valid"


async def test_register_event_only_revokes_certificates_issued_before_it(http, rt, terminal, keys, feed):
    h = await new_holder(http, terminal, keys)
    before = (h.certs["signing"].not_valid_before_utc - dt.timedelta(hours=2)).isoformat()
    after = (h.certs["signing"].not_valid_before_utc + dt.timedelta(seconds=1)).isoformat()
    events = [{"event_id": rid(), "resident_code": h.code, "kind": "moved", "occurred_at": before}]
    resp = await http.post("/v1/residency-events", json={"events": events},
                           ssl=feed.ssl)
    body = await resp.json()
    assert body["results"][0]["outcome"] == "issued_after_event" and body["summary"]["issued_after_event"] == 1
    assert await status_of(rt, h.serial("signing")) == "valid"
    events = [{"event_id": rid(), "resident_code": h.code, "kind": "moved", "occurred_at": after}]
    resp = await http.post("/v1/residency-events", json={"events": events},
                           ssl=feed.ssl)
    assert (await resp.json())["results"][0]["outcome"] == "applied"
    assert await status_of(rt, h.serial("signing")) == "revoked"
    assert await status_of(rt, h.serial("auth")) == "valid"


async def test_online_revocation_date_is_when_it_took_effect(http, rt, terminal, keys, tmp_path):
    h = await new_holder(http, terminal, keys, kinds=("auth",))
    resp = await http.post("/v1/online/revocations", data=h.application("auth", "revocation"), headers=CT)
    assert resp.status == 202
    issuer = rt.issuers.current("auth")
    async with rt.pool.acquire() as conn:  # CRL dates never go back: after every CRL of the session
        last = await crls.latest(conn, issuer.db_id, "full")
    later = FixedClock(max(rt.clock.now(), last.this_update if last else rt.clock.now()) + dt.timedelta(minutes=7))
    pub = Publisher.from_runtime(dataclasses.replace(rt, clock=later))
    pub.out = tmp_path
    outcome = await pub.publish(Target(issuer, "full", "base"))
    crl = x509.load_der_x509_crl((tmp_path / outcome.target.path).read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(h.serial("auth"))
    assert entry is not None and entry.revocation_date_utc == later.now() == crl.last_update_utc
    answer = await _ocsp(http, h.certs["auth"], _issuer_of(rt, "auth"))
    assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED and answer.revocation_time_utc == later.now()


@pytest.fixture
async def http_at(rt, tls, terminal):
    """A factory of applications whose services run on a fixed clock (same database and token): the
    client of its private listener."""
    from tests.tls_clients import TestServers

    started = []

    async def make(at: dt.datetime):
        servers = await TestServers.start(dataclasses.replace(rt, clock=FixedClock(at)), tls, default=terminal.ssl)
        started.append(servers)
        return servers.private

    yield make
    for servers in started:
        await servers.close()


async def test_certificates_never_outlive_their_ca(rt, http_at, terminal, keys):
    ca_end = rt.issuers.current("auth").not_after
    near = await http_at(ca_end - dt.timedelta(days=30))
    data = await issue(near, terminal, issue_body(keys, kinds=("auth",),
                                                  card_expires_on=(ca_end + dt.timedelta(days=3000)).date().isoformat()))
    cert = x509.load_pem_x509_certificate(data["certificates"][0]["certificate"].encode())
    assert cert.not_valid_after_utc == ca_end
    gone = await http_at(ca_end + dt.timedelta(seconds=1))
    body = issue_body(keys, kinds=("auth",), card_expires_on=(ca_end + dt.timedelta(days=3000)).date().isoformat())
    resp = await gone.post("/v1/certificates", json=body,
                           **terminal.auth())
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "ca_expired"
    async with rt.pool.acquire() as conn:  # nothing recorded
        assert await conn.fetchval("SELECT count(*) FROM issuance WHERE request_id = $1", body["request_id"]) == 0


@pytest.mark.parametrize("event", ["municipal_merger", "address_notation_changed"])
async def test_free_reissue_after_merger_or_address_notation(http, rt, terminal, keys, feed, event):
    h = await new_holder(http, terminal, keys)
    occurred = (h.certs["signing"].not_valid_before_utc + dt.timedelta(seconds=1)).isoformat()
    resp = await http.post("/v1/residency-events", ssl=feed.ssl,
                           json={"events": [{"event_id": rid(), "resident_code": h.code, "kind": event,
                                             "occurred_at": occurred}]})
    assert (await resp.json())["results"][0]["outcome"] == "applied"
    data = await issue(http, terminal, issue_body(keys, kinds=("signing",), code=h.code))
    new = x509.load_pem_x509_certificate(data["certificates"][0]["certificate"].encode())
    assert new.serial_number != h.serial("signing")
    assert await status_of(rt, h.serial("signing")) == "revoked"  # superseded, or revoked by the event
    assert await status_of(rt, h.serial("auth")) == "valid"
    # the entitlement is used once: the next early renewal is refused again
    resp = await http.post("/v1/certificates", json=issue_body(keys, kinds=("signing",), code=h.code),
                           **terminal.auth())
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "renewal_too_early"

