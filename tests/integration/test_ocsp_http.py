"""The OCSP responder over HTTP on the real PostgreSQL and SoftHSM token: answers checked with
cryptography's strict parser and with `openssl ocsp` as the relying party."""
from __future__ import annotations

import datetime as dt
import email.utils
import os
import secrets
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from crl_publisher.publisher import activate_pending
from tests.helpers import certs_by_kind, issue, issue_body
from tests.ocsp_helpers import (UNSUPPORTED_HASH, cert_id, check_response, get_path, hold, openssl_ocsp, responder,
                                raw_request, release, request_der, revoke, status_of)

OCSP_HEADERS = {"Content-Type": "application/ocsp-request"}


@pytest.fixture
async def issued(http, terminal, keys, rt):
    """A fresh resident's signing and auth certificates with their issuers."""
    certs = certs_by_kind(await issue(http, terminal, issue_body(keys)))
    return {kind: (cert, x509.load_der_x509_certificate(rt.issuers.current(kind).certificate_der))
            for kind, cert in certs.items()}


async def post(http, der: bytes, headers=OCSP_HEADERS):
    resp = await http.post("/ocsp", data=der, headers=headers)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/ocsp-response"
    return resp, await resp.read()


async def single(http, cert, issuer, ca_der, **kw) -> ocsp.OCSPResponse:
    _r, body = await post(http, request_der(cert, issuer, **kw))
    resp = check_response(body, ca_der)
    assert resp.serial_number == cert.serial_number
    return resp


async def test_good_for_both_cas_and_both_hashes(http, issued):
    for kind, (cert, issuer) in issued.items():
        for alg in (hashes.SHA1(), hashes.SHA256()):
            resp = await single(http, cert, issuer, issuer.public_bytes(serialization.Encoding.DER), algorithm=alg)
            assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
            assert resp.hash_algorithm.name == alg.name
            assert resp.next_update_utc - resp.this_update_utc == dt.timedelta(seconds=900)


async def test_revocation_shows_at_once_even_after_a_cached_good(http, issued, rt):
    cert, issuer = issued["signing"]
    ca_der = issuer.public_bytes(serialization.Encoding.DER)
    der = request_der(cert, issuer)
    for _ in range(2):  # the second answer comes from memory
        resp = check_response((await post(http, der))[1], ca_der)
        assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
    g = await http.get(get_path(der))
    assert check_response(await g.read(), ca_der).certificate_status == ocsp.OCSPCertStatus.GOOD
    cache = responder().cache
    assert cache.enabled and cache.get(der, time.time()) is not None  # the good answer is in memory

    await revoke(rt, cert.serial_number, 1)  # keyCompromise, committed
    for answer in ((await post(http, der))[1], await (await http.get(get_path(der))).read()):
        resp = check_response(answer, ca_der)
        assert resp.certificate_status == ocsp.OCSPCertStatus.REVOKED
        assert resp.revocation_reason == x509.ReasonFlags.key_compromise
        assert abs(resp.revocation_time_utc - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=1)


async def test_hold_then_release(http, issued, rt):
    cert, issuer = issued["auth"]
    ca_der = issuer.public_bytes(serialization.Encoding.DER)
    assert (await single(http, cert, issuer, ca_der)).certificate_status == ocsp.OCSPCertStatus.GOOD
    await hold(rt, cert.serial_number)
    resp = await single(http, cert, issuer, ca_der)
    assert resp.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_reason == x509.ReasonFlags.certificate_hold
    await release(rt, cert.serial_number)
    assert (await single(http, cert, issuer, ca_der)).certificate_status == ocsp.OCSPCertStatus.GOOD


async def test_accepted_online_revocation_is_good_until_effective(http, issued, rt):
    """JPKI rule: an online revocation is accepted at once and effective with the next CRL."""
    cert, issuer = issued["signing"]
    ca_der = issuer.public_bytes(serialization.Encoding.DER)
    assert (await single(http, cert, issuer, ca_der)).certificate_status == ocsp.OCSPCertStatus.GOOD
    await revoke(rt, cert.serial_number, 5, effective=False, source="online")
    assert (await single(http, cert, issuer, ca_der)).certificate_status == ocsp.OCSPCertStatus.GOOD
    effective = rt.clock.now() + dt.timedelta(seconds=5)
    async with rt.pool.acquire() as conn, conn.transaction():  # what the next CRL issuance does
        await activate_pending(conn, effective)
    resp = await single(http, cert, issuer, ca_der)
    assert resp.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_reason == x509.ReasonFlags.cessation_of_operation
    assert resp.revocation_time_utc == effective  # revocationDate = the time it took effect, not acceptance


async def test_unknown_serial_and_unserved_issuer(http, issued, rt):
    cert, issuer = issued["signing"]
    ca_der = issuer.public_bytes(serialization.Encoding.DER)
    cid = cert_id(request_der(cert, issuer))
    cid["serial_number"] = int.from_bytes(secrets.token_bytes(15), "big") | 1
    resp = check_response((await post(http, raw_request([cid])))[1], ca_der)
    assert resp.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    # The auth certificate's serial asked of the signing CA: never issued there.
    auth_cert, _ = issued["auth"]
    cid["serial_number"] = auth_cert.serial_number
    resp = check_response((await post(http, raw_request([cid])))[1], ca_der)
    assert resp.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    cid["issuer_key_hash"] = secrets.token_bytes(20)
    assert status_of((await post(http, raw_request([cid])))[1]) == "unauthorized"


async def test_nonce_is_echoed_and_answer_fresh(http, issued):
    cert, issuer = issued["auth"]
    ca_der = issuer.public_bytes(serialization.Encoding.DER)
    bodies = set()
    for size in (1, 16, 32):
        nonce = secrets.token_bytes(size)
        resp, body = await post(http, request_der(cert, issuer, nonce=nonce))
        parsed = check_response(body, ca_der)
        assert parsed.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
        assert "no-store" in resp.headers["Cache-Control"]
        bodies.add(body)
    assert len(bodies) == 3
    for size in (33, 0):
        cid = cert_id(request_der(cert, issuer))
        from asn1crypto import ocsp as aocsp
        der = raw_request([cid], extensions=[aocsp.TBSRequestExtension(
            {"extn_id": "nonce", "critical": False, "extn_value": b"\x01" * size})])
        assert status_of((await post(http, der))[1]) == "malformed_request"


async def test_several_cert_ids(http, issued, terminal, keys, rt):
    cert, issuer = issued["signing"]
    ca_der = issuer.public_bytes(serialization.Encoding.DER)
    other = certs_by_kind(await issue(http, terminal, issue_body(keys, kinds=("signing",))))["signing"]
    await revoke(rt, other.serial_number, 3)
    builder = ocsp.OCSPRequestBuilder()
    der = raw_request([cert_id(request_der(cert, issuer)), cert_id(request_der(other, issuer))])
    resp = check_response((await post(http, der))[1], ca_der)
    got = {r.serial_number: r.certificate_status for r in resp.responses}
    assert got == {cert.serial_number: ocsp.OCSPCertStatus.GOOD, other.serial_number: ocsp.OCSPCertStatus.REVOKED}
    # Spanning both CAs: one responder cannot answer for both.
    auth_cert, auth_issuer = issued["auth"]
    der = raw_request([cert_id(request_der(cert, issuer)), cert_id(request_der(auth_cert, auth_issuer))])
    assert status_of((await post(http, der))[1]) == "unauthorized"
    # Over the bound.
    der = raw_request([cert_id(request_der(cert, issuer))] * (rt.cfg.ocsp.max_certs_per_request + 1))
    assert status_of((await post(http, der))[1]) == "malformed_request"
    del builder


async def test_hostile_requests(http, issued):
    cert, issuer = issued["signing"]
    good = request_der(cert, issuer)
    cid = cert_id(good)
    cid["hash_algorithm"] = {"algorithm": UNSUPPORTED_HASH.native}
    cid["issuer_name_hash"] = cid["issuer_key_hash"] = b"\x00" * 64
    cases = {
        "truncated": (good[:-7], "malformed_request"),
        "random": (os.urandom(200), "malformed_request"),
        "empty": (b"", "malformed_request"),
        "trailing": (good + b"\x00", "malformed_request"),
        "huge": (b"\x30\x82\xff\xff" + os.urandom(70_000), "malformed_request"),
        "unsupported hash": (raw_request([cid]), "unauthorized"),
        "deep nesting": (b"\x30\x80" * 2000, "malformed_request"),
    }
    for name, (der, expected) in cases.items():
        _resp, body = await post(http, der)
        assert status_of(body) == expected, name
    _resp, body = await post(http, good, headers={"Content-Type": "application/json"})
    assert status_of(body) == "malformed_request"
    for path in ("/ocsp/!!!notbase64", "/ocsp/" + "A" * 7000, "/ocsp/MAA%3D", "/ocsp/%FF%FE"):
        resp = await http.get(path)
        assert resp.status == 200, path
        assert status_of(await resp.read()) == "malformed_request", path


async def test_get_caching_headers(http, issued):
    cert, issuer = issued["auth"]
    ca_der = issuer.public_bytes(serialization.Encoding.DER)
    path = get_path(request_der(cert, issuer))
    first = await http.get(path)
    body = await first.read()
    resp = check_response(body, ca_der)
    h = first.headers
    max_age = int(h["Cache-Control"].split("max-age=")[1].split(",")[0])
    remaining = (resp.next_update_utc - dt.datetime.now(dt.timezone.utc)).total_seconds()
    assert abs(max_age - remaining) <= 2
    assert {"public", "no-transform", "must-revalidate"} <= {p.strip() for p in h["Cache-Control"].split(",")}
    assert email.utils.parsedate_to_datetime(h["Last-Modified"]) == resp.this_update_utc
    assert email.utils.parsedate_to_datetime(h["Expires"]) == resp.next_update_utc
    second = await http.get(path)
    assert await second.read() == body and second.headers["ETag"] == h["ETag"]
    cond = await http.get(path, headers={"If-None-Match": h["ETag"]})
    assert cond.status == 304


async def test_openssl_relying_party(public, issued, rt, ca_pem, tmp_path):
    cert, issuer = issued["signing"]
    url = str(public.make_url("/ocsp"))
    serial = f"0x{cert.serial_number:x}"
    cert_file = tmp_path / "cert.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    base = ["-issuer", ca_pem["signing"], "-url", url, "-CAfile", ca_pem["signing"]]
    for extra in ([], ["-no_nonce"]):
        code, out = await openssl_ocsp(*base, "-serial", serial, *extra)
        assert code == 0 and "Response verify OK" in out and f"{serial}: good" in out, out
    code, out = await openssl_ocsp(*base, "-cert", str(cert_file))
    assert code == 0 and "Response verify OK" in out and ": good" in out, out
    unknown = f"0x{secrets.randbits(120) | 1:x}"
    code, out = await openssl_ocsp(*base, "-serial", unknown, "-no_nonce")
    assert "Response verify OK" in out and f"{unknown}: unknown" in out, out
    await revoke(rt, cert.serial_number, 1)
    for extra in ([], ["-no_nonce"]):
        code, out = await openssl_ocsp(*base, "-serial", serial, *extra)
        assert "Response verify OK" in out and f"{serial}: revoked" in out, out
        assert "Reason: keyCompromise" in out, out
    code, out = await openssl_ocsp(*base, "-cert", str(cert_file))
    assert "Response verify OK" in out and ": revoked" in out, out


async def test_every_ca_generation_has_a_responder(http, rt):
    svc = responder()
    await svc.load_responders()
    for issuer in rt.issuers:
        key = svc.responders[issuer.db_id]
        cert = x509.load_der_x509_certificate(key.certificate_der)
        cert.verify_directly_issued_by(x509.load_der_x509_certificate(issuer.certificate_der))
