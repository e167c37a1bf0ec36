"""Responder built from a pool, the software token, a fixed clock, an IssuerDirectory, its settings, the
database URL and the CA settings; requests are built with cryptography as relying parties build them."""
from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509 import ocsp

from ca_core.serials import new_serial
from revocation.service import WindowRequest
from tests.services.support import OPERATOR, issue_holder, request_id


def request_for(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    req = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    return req.public_bytes(serialization.Encoding.DER)


def request_by_hash(ca: x509.Certificate, serial: int) -> bytes:
    """A request naming ``serial`` under the CA ``ca`` (SHA-1 of its name and of its key)."""
    name_hash = hashes.Hash(hashes.SHA1())
    name_hash.update(ca.subject.public_bytes())
    key_hash = x509.SubjectKeyIdentifier.from_public_key(ca.public_key()).digest
    return (ocsp.OCSPRequestBuilder()
            .add_certificate_by_hash(name_hash.finalize(), key_hash, serial, hashes.SHA1())
            .build().public_bytes(serialization.Encoding.DER))


async def ask(responder, der: bytes) -> ocsp.OCSPResponse:
    answer = await responder.answer(der, der)
    assert answer.successful, answer.status
    return ocsp.load_der_ocsp_response(answer.body)


async def check_signed(resp: ocsp.OCSPResponse, parts, ca: str) -> None:
    """Signed by the responder certificate of the CA's current generation, which that CA issued."""
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert len(resp.certificates) == 1
    responder_cert = resp.certificates[0]
    responder_cert.verify_directly_issued_by(parts.ca(ca))
    assert x509.ExtendedKeyUsageOID.OCSP_SIGNING in \
        responder_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    async with parts.pool.acquire() as conn:
        stored = await conn.fetchval("SELECT certificate FROM ocsp_responder WHERE ca_generation_id = $1"
                                     " ORDER BY id DESC LIMIT 1", parts.issuers.current(ca).db_id)
    assert responder_cert.public_bytes(serialization.Encoding.DER) == bytes(stored)
    responder_cert.public_key().verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(),
                                       resp.signature_hash_algorithm)
    assert resp.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(responder_cert.public_key()).digest
    # and not by the CA key itself
    with pytest.raises(Exception):
        parts.ca(ca).public_key().verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(),
                                         resp.signature_hash_algorithm)


def _revoke(serial, reason):
    return WindowRequest(action="revoke", request_id=request_id(), serial=serial, resident_code=None, kinds=(),
                         reason=reason)


async def test_good_for_an_issued_certificate(responder, issuance, parts, clock):
    holder = await issue_holder(issuance, parts)
    clock.advance(minutes=5)
    for kind in ("signing", "auth"):
        signatures = parts.signer.signatures
        resp = await ask(responder, request_for(holder.certs[kind], parts.ca(kind)))
        assert parts.signer.signatures == signatures + 1
        await check_signed(resp, parts, kind)
        assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
        assert resp.serial_number == holder.serial(kind)
        assert resp.hash_algorithm.name == "sha1"
        assert resp.produced_at_utc == clock.now()
        assert resp.this_update_utc == clock.now()
        assert resp.next_update_utc == clock.now() + dt.timedelta(seconds=parts.cfg.ocsp.validity_seconds)


async def test_revoked_with_reason_after_a_window_revocation(responder, issuance, window, parts, clock):
    holder = await issue_holder(issuance, parts)
    auth_req = request_for(holder.certs["auth"], parts.ca("auth"))
    signing_req = request_for(holder.certs["signing"], parts.ca("signing"))
    assert (await ask(responder, auth_req)).certificate_status == ocsp.OCSPCertStatus.GOOD

    clock.advance(minutes=1)
    revoked_at = clock.now()
    await window.handle(parts.terminal, OPERATOR, _revoke(holder.serial("auth"), "key_compromise"))
    clock.advance(minutes=1)

    resp = await ask(responder, auth_req)
    await check_signed(resp, parts, "auth")
    assert resp.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_reason == x509.ReasonFlags.key_compromise
    assert resp.revocation_time_utc == revoked_at
    assert resp.produced_at_utc == clock.now()
    # the cascade: the signing certificate was revoked too, as cessationOfOperation
    resp = await ask(responder, signing_req)
    await check_signed(resp, parts, "signing")
    assert resp.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_reason == x509.ReasonFlags.cessation_of_operation


async def test_a_hold_is_revoked_with_certificate_hold_and_good_again_after_release(responder, issuance, window,
                                                                                   parts, clock):
    holder = await issue_holder(issuance, parts, kinds=("auth",))
    req = request_for(holder.certs["auth"], parts.ca("auth"))
    await window.handle(parts.terminal, OPERATOR, WindowRequest(
        action="hold", request_id=request_id(), serial=holder.serial("auth"), resident_code=None, kinds=()))
    resp = await ask(responder, req)
    assert resp.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_reason == x509.ReasonFlags.certificate_hold
    clock.advance(hours=1)
    await window.handle(parts.terminal, OPERATOR, WindowRequest(
        action="release", request_id=request_id(), serial=holder.serial("auth"), resident_code=None, kinds=()))
    resp = await ask(responder, req)
    assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert resp.produced_at_utc == clock.now()


async def test_unknown_for_a_serial_never_issued(responder, parts, clock):
    serial = new_serial()
    resp = await ask(responder, request_by_hash(parts.ca("signing"), serial))
    await check_signed(resp, parts, "signing")
    assert resp.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    assert resp.serial_number == serial
    assert resp.produced_at_utc == clock.now()


async def test_a_certificate_of_the_other_ca_named_under_this_one_is_not_good(responder, issuance, parts):
    """The CertID names the signing CA but the serial is an auth certificate's: UNKNOWN, never GOOD."""
    holder = await issue_holder(issuance, parts, kinds=("auth",))
    resp = await ask(responder, request_by_hash(parts.ca("signing"), holder.serial("auth")))
    assert resp.certificate_status == ocsp.OCSPCertStatus.UNKNOWN


async def test_a_request_for_an_issuer_not_served_is_unauthorized(responder, parts, keys):
    other_key = keys.new()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Some other CA")])
    now = dt.datetime.now(dt.timezone.utc)
    other_ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(other_key.public_key())
                .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
                .sign(other_key, hashes.SHA256()))
    signatures = parts.signer.signatures
    der = request_for(other_ca, other_ca)
    answer = await responder.answer(der, der)
    assert not answer.successful
    assert ocsp.load_der_ocsp_response(answer.body).response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED
    assert parts.signer.signatures == signatures


def _with_nonce(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    import os
    req = (ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
           .add_extension(x509.OCSPNonce(os.urandom(16)), critical=False).build())
    return req.public_bytes(serialization.Encoding.DER)


async def test_a_clock_stepped_back_never_makes_an_answer_older_than_one_served(responder, issuance, parts, clock):
    holder = await issue_holder(issuance, parts)
    clock.advance(minutes=5)
    first = await ask(responder, _with_nonce(holder.certs["auth"], parts.ca("auth")))
    clock.advance(minutes=-30)  # an NTP correction steps the host clock back
    second = await ask(responder, _with_nonce(holder.certs["auth"], parts.ca("auth")))
    assert second.produced_at_utc == first.produced_at_utc and second.this_update_utc >= first.this_update_utc
    await check_signed(second, parts, "auth")
