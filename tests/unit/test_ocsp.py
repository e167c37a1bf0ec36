"""ca_core.ocsp and the responder's memory cache, without database or token: keys in memory."""
from __future__ import annotations

import datetime as dt
import os

import pytest
from asn1crypto import ocsp as aocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from ca_core import ocsp as core_ocsp
from ca_core.algorithms import algorithm_for
from ca_core.ca import Issuer
from ca_core.ocsp import CertStatus, ResponseStatus, parse_request
from ocsp_responder.cache import Entry, ResponseCache

NOW = dt.datetime(2026, 4, 1, 3, 0, 0, tzinfo=dt.timezone.utc)


def _cert(key, subject, issuer_key, issuer_name, serial, ca=False):
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
         .serial_number(serial).not_valid_before(NOW - dt.timedelta(days=1))
         .not_valid_after(NOW + dt.timedelta(days=30)))
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    else:
        b = b.add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki():
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"), x509.NameAttribute(NameOID.COMMON_NAME, "CA")])
    ca = _cert(ca_key, name, ca_key, name, 1, ca=True)
    rkey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    responder = _cert(rkey, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "OCSP")]), ca_key, name, 2)
    leaf = _cert(rsa.generate_private_key(public_exponent=65537, key_size=2048),
                 x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]), ca_key, name, 0x1234567890ABCDEF)
    issuer = Issuer(db_id=7, ca_id="auth", generation=1, key_label="ca", algorithm=algorithm_for("rsa2048"),
                    certificate_der=ca.public_bytes(serialization.Encoding.DER))
    return {"ca": ca, "responder": responder, "rkey": rkey, "leaf": leaf, "issuer": issuer}


def _req(pki, alg=hashes.SHA1(), nonce=None):
    b = ocsp.OCSPRequestBuilder().add_certificate(pki["leaf"], pki["ca"], alg)
    if nonce is not None:
        b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
    return b.build().public_bytes(serialization.Encoding.DER)


def _cid(der):
    return aocsp.OCSPRequest.load(der)["tbs_request"]["request_list"][0]["req_cert"].native


def _raw(cids, exts=None):
    tbs = {"request_list": [{"req_cert": c} for c in cids]}
    if exts:
        tbs["request_extensions"] = exts
    return aocsp.OCSPRequest({"tbs_request": tbs}).dump()


def test_parse_sha1_and_sha256_and_resolve(pki):
    index = core_ocsp.IssuerIndex([pki["issuer"]])
    for alg in (hashes.SHA1(), hashes.SHA256()):
        parsed = parse_request(_req(pki, alg))
        assert parsed.certs[0].serial == pki["leaf"].serial_number
        assert parsed.nonce is None
        assert index.resolve(parsed) is pki["issuer"]


def test_nonce_bounds(pki):
    assert parse_request(_req(pki, nonce=b"\x01" * 32)).nonce == b"\x01" * 32
    assert parse_request(_req(pki, nonce=b"\x02")).nonce == b"\x02"
    cid = _cid(_req(pki))
    for size in (0, 33):
        der = _raw([cid], [{"extn_id": "nonce", "critical": False, "extn_value": b"\x01" * size}])
        assert parse_request(der) == ResponseStatus.malformed_request


def test_critical_unknown_extension_is_malformed(pki):
    cid = _cid(_req(pki))
    for critical, expected in ((True, ResponseStatus), (False, core_ocsp.ParsedRequest)):
        ext = aocsp.TBSRequestExtension({"extn_id": "1.2.3.4", "critical": critical, "extn_value": b"\x05\x00"})
        assert isinstance(parse_request(_raw([cid], [ext])), expected)


def test_unsupported_hash_is_unauthorized_and_bad_lengths_malformed(pki):
    index = core_ocsp.IssuerIndex([pki["issuer"]])
    cid = _cid(_req(pki))
    cid["hash_algorithm"] = {"algorithm": "sha512"}
    cid["issuer_name_hash"] = cid["issuer_key_hash"] = b"\x00" * 64
    parsed = parse_request(_raw([cid]))
    assert index.resolve(parsed) == ResponseStatus.unauthorized
    cid = _cid(_req(pki))
    cid["issuer_key_hash"] = b"\x00" * 19
    assert parse_request(_raw([cid])) == ResponseStatus.malformed_request


def test_bounds_on_cert_ids(pki):
    cid = _cid(_req(pki))
    assert len(parse_request(_raw([cid] * 10), max_certs=10).certs) == 10
    assert parse_request(_raw([cid] * 11), max_certs=10) == ResponseStatus.malformed_request
    assert parse_request(_raw([])) == ResponseStatus.malformed_request


@pytest.mark.parametrize("der", [b"", b"\x30", b"\x30\x00", b"\x05\x00", b"\x30\x80" * 500,
                                 b"\x30\x84\xff\xff\xff\xff", b"\xff" * 100])
def test_garbage_is_malformed(der):
    assert parse_request(der) == ResponseStatus.malformed_request


def test_random_and_truncated_never_raise(pki):
    good = _req(pki, nonce=os.urandom(16))
    for cut in range(len(good)):
        assert parse_request(good[:cut]) == ResponseStatus.malformed_request
    for _ in range(300):
        data = bytearray(good)
        data[os.urandom(1)[0] % len(data)] ^= 1 << (os.urandom(1)[0] % 8)
        result = parse_request(bytes(data))
        assert isinstance(result, (core_ocsp.ParsedRequest, ResponseStatus))
    for _ in range(200):
        assert isinstance(parse_request(os.urandom(os.urandom(1)[0] + 1)), ResponseStatus)


def _sign(pki, statuses, nonce=None):
    parsed = parse_request(_req(pki, nonce=nonce))
    tbs = core_ocsp.response_data(
        responder_key_hash=core_ocsp.responder_key_hash(pki["responder"].public_bytes(serialization.Encoding.DER)),
        produced_at=NOW, singles=[(parsed.certs[0].cert_id_der, s) for s in statuses], this_update=NOW,
        next_update=NOW + dt.timedelta(minutes=15), nonce=nonce)
    sig = pki["rkey"].sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    der = core_ocsp.assemble(tbs, algorithm_for("rsa2048"), sig,
                             pki["responder"].public_bytes(serialization.Encoding.DER))
    resp = ocsp.load_der_ocsp_response(der)
    pki["responder"].public_key().verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(),
                                         resp.signature_hash_algorithm)
    return resp


def test_good_response_verifies(pki):
    resp = _sign(pki, [core_ocsp.GOOD], nonce=b"n" * 16)
    assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert resp.serial_number == pki["leaf"].serial_number
    assert resp.this_update_utc == NOW and resp.next_update_utc == NOW + dt.timedelta(minutes=15)
    assert resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * 16
    assert resp.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(
        pki["responder"].public_key()).digest
    assert resp.certificates[0] == pki["responder"]


def test_revoked_hold_and_unknown(pki):
    at = NOW - dt.timedelta(hours=1)
    resp = _sign(pki, [CertStatus("revoked", at, 1)])
    assert resp.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_time_utc == at and resp.revocation_reason == x509.ReasonFlags.key_compromise
    resp = _sign(pki, [core_ocsp.status_from_record(exists=True, status="held", reason=6, since=at)])
    assert resp.revocation_reason == x509.ReasonFlags.certificate_hold
    resp = _sign(pki, [core_ocsp.status_from_record(exists=True, status="revoked", reason=0, since=at)])
    assert resp.revocation_reason is None  # unspecified is not stated, as in the CRL entry
    assert _sign(pki, [core_ocsp.UNKNOWN]).certificate_status == ocsp.OCSPCertStatus.UNKNOWN


def test_status_rules():
    at = NOW
    assert core_ocsp.status_from_record(exists=False, status=None, reason=None, since=None).kind == "unknown"
    assert core_ocsp.status_from_record(exists=True, status="valid", reason=None, since=None).kind == "good"
    st = core_ocsp.status_from_record(exists=True, status="held", reason=6, since=at)
    assert (st.kind, st.reason, st.revoked_at) == ("revoked", 6, at)
    st = core_ocsp.status_from_record(exists=True, status="revoked", reason=5, since=at)
    assert (st.kind, st.reason, st.revoked_at) == ("revoked", 5, at)
    with pytest.raises(ValueError):  # the database never holds this (certificate_status_consistent)
        core_ocsp.status_from_record(exists=True, status="revoked", reason=None, since=None)
    assert CertStatus("revoked", at, 1).key != CertStatus("revoked", at, 6).key != core_ocsp.GOOD.key


def test_error_responses():
    for status in (ResponseStatus.malformed_request, ResponseStatus.try_later, ResponseStatus.unauthorized,
                   ResponseStatus.internal_error):
        resp = ocsp.load_der_ocsp_response(core_ocsp.error_response(status))
        assert resp.response_status.value == int(status)
    with pytest.raises(ValueError):
        core_ocsp.error_response(ResponseStatus.successful)


def _entry(serials, now=1000.0):
    return Entry.make(b"body", now, now + 900, now + 300, serials, "good")


def test_cache_invalidation_and_races():
    cache = ResponseCache(100)
    assert cache.get("k", 1000) is None
    cache.enabled = True
    since = cache.seq
    assert cache.put(("k", b"cid"), _entry((5,)), since)
    assert cache.get("k", 1001).body == b"body" and cache.get(b"cid", 1001) is not None
    assert cache.get("k", 1300) is None  # due for refresh
    cache.invalidate(5)
    assert cache.get("k", 1001) is None and cache.get(b"cid", 1001) is None
    # An answer begun before an invalidation of its serial is not stored.
    since = cache.seq
    cache.invalidate(5)
    assert not cache.put(("k",), _entry((5,)), since)
    assert cache.put(("k",), _entry((5,)), cache.seq)
    # Nor one begun before the listener was lost, nor any while it is down.
    since = cache.seq
    cache.clear()
    assert not cache.put(("j",), _entry((6,)), since)
    cache.enabled = False
    assert not cache.put(("j",), _entry((6,)), cache.seq)


def test_cache_is_bounded():
    cache = ResponseCache(50)
    cache.enabled = True
    for i in range(500):
        cache.put((i,), _entry((i,)), cache.seq)
    assert len(cache) <= 50
    assert cache.get(499, 1001) is not None
    cache.invalidate(499)
    assert cache.get(499, 1001) is None


def test_invalidations_kept_are_bounded_and_none_missed():
    cache = ResponseCache(50, max_invalidations=100)
    cache.enabled = True
    first = cache.seq
    history = {}
    for i in range(5000):
        serial = (i * 7919) % 300  # serials changed again and again
        cache.invalidate(serial)
        history[serial] = cache.seq
        assert len(cache._invalidated) <= 100
        for since in range(max(0, cache.seq - 250), cache.seq + 1, 7):
            for s in (serial, (serial + 1) % 300, 1000):
                if history.get(s, -1) > since:  # a change the answer may predate: never stored
                    assert cache.changed_since((s,), since)
    assert cache.changed_since((1000,), first)  # begun before invalidations since forgotten: refused
    assert not cache.changed_since((1000,), cache.seq)  # begun now, serial unchanged: stored
    assert cache.put((b"cid",), _entry((1000,)), cache.seq)


def test_invalidating_one_serial_of_a_multi_certid_answer_leaves_no_stale_key():
    cache = ResponseCache(100)
    cache.enabled = True
    for i in range(1000):  # a request about certificates 1 and 2, asked again after each change of 1
        assert cache.put((b"req-%d" % i,), _entry((1, 2)), cache.seq)
        cache.invalidate(1)
    assert len(cache) == 0 and cache._keys_of == {}


def test_headers_follow_rfc5019():
    e = _entry((1,), now=1_700_000_000.0)
    h = e.headers(1_700_000_100.0)
    assert h["Cache-Control"] == "max-age=800, public, no-transform, must-revalidate"
    assert h["Last-Modified"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert h["Expires"] == "Tue, 14 Nov 2023 22:28:20 GMT"
    assert h["ETag"].startswith('"') and h["Content-Type"] == "application/ocsp-response"
