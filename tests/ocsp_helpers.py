"""Helpers of the OCSP tests: requests built as relying parties build them, responses checked strictly."""
from __future__ import annotations

import asyncio
import base64
import os
import urllib.parse

from asn1crypto import core, ocsp as aocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509 import ocsp

from ca_core.revocation import Reason, encode_entry
from ca_core.clock import SystemClock
from storage import audit, certificates, revocations


def request_der(cert: x509.Certificate, issuer: x509.Certificate, *, algorithm=hashes.SHA1(),
                nonce: bytes | None = None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm)
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def raw_request(cert_ids: list[dict], *, extensions: list | None = None) -> bytes:
    """An OCSPRequest assembled field by field (for requests cryptography refuses to build)."""
    tbs = {"request_list": [{"req_cert": cid} for cid in cert_ids]}
    if extensions is not None:
        tbs["request_extensions"] = extensions
    return aocsp.OCSPRequest({"tbs_request": tbs}).dump()


def cert_id(der: bytes) -> dict:
    """The CertID of a request made by request_der, as a dict for raw_request."""
    return aocsp.OCSPRequest.load(der)["tbs_request"]["request_list"][0]["req_cert"].native


def get_path(der: bytes) -> str:
    return "/ocsp/" + urllib.parse.quote(base64.b64encode(der).decode(), safe="")


def check_response(der: bytes, ca_der: bytes) -> ocsp.OCSPResponse:
    """Parse strictly; the signature verifies with the included responder certificate, which the CA
    issued for OCSP signing, and the responderID is its key hash."""
    resp = ocsp.load_der_ocsp_response(der)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert len(resp.certificates) == 1
    responder = resp.certificates[0]
    ca = x509.load_der_x509_certificate(ca_der)
    responder.verify_directly_issued_by(ca)
    assert x509.ExtendedKeyUsageOID.OCSP_SIGNING in responder.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    key = responder.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(resp.signature_hash_algorithm))
    else:
        key.verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), resp.signature_hash_algorithm)
    assert resp.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(key).digest
    assert resp.responder_name is None
    return resp


def status_of(der: bytes) -> str:
    """responseStatus of any OCSPResponse (errors included), e.g. "malformed_request"."""
    return aocsp.OCSPResponse.load(der, strict=True)["response_status"].native


_RESPONDER = []  # the responder of the session's application (tests/conftest.py, fixture http)


def use_responder(svc) -> None:
    _RESPONDER[:] = [svc]


def responder():
    """The OCSP responder of the application the session's tests talk to."""
    return _RESPONDER[0]


async def delivered(rt, serial: int, since: int, timeout: float = 2.0) -> None:
    """Wait until this process's responder has received the status notification of ``serial`` sent on
    commit (PostgreSQL delivers it asynchronously, within milliseconds): the memory cache follows the
    notifications, while the database cache is invalidated in the committing transaction itself."""
    if not _RESPONDER:
        return
    cache = responder().cache
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if cache._invalidated.get(serial, -1) > since or cache._floor > since:
            return
        await asyncio.sleep(0.002)


def _seq(rt) -> int:
    return responder().cache.seq if _RESPONDER else 0


async def revoke(rt, serial: int, reason: int, *, effective: bool = True, source: str = "window") -> None:
    """Revoke through storage, as the revocation service does (row lock, audit, notify on commit)."""
    now = SystemClock().now()
    since = _seq(rt)
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            cert = await certificates.by_serial(conn, serial, for_update=True)
            await revocations.apply_revocation(conn, cert, reason=reason, at=now,
                                               effective_at=now if effective else None, source=source,
                                               source_ref=None, entry_der=encode_entry(cert.serial, now, Reason(reason)))
            await audit.record(conn, action="revoke", operator_id="test", serial=cert.serial.to_bytes(16, "big"),
                               details={"reason": reason})
    if effective:
        await delivered(rt, serial, since)


async def hold(rt, serial: int) -> None:
    now = SystemClock().now()
    since = _seq(rt)
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            cert = await certificates.by_serial(conn, serial, for_update=True)
            await revocations.place_hold(conn, cert, at=now,
                                         entry_der=encode_entry(cert.serial, now, Reason.certificate_hold))
    await delivered(rt, serial, since)


async def release(rt, serial: int) -> None:
    now = SystemClock().now()
    since = _seq(rt)
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            cert = await certificates.by_serial(conn, serial, for_update=True)
            await revocations.release_hold(conn, cert, at=now)
    await delivered(rt, serial, since)


async def openssl_ocsp(*args: str) -> tuple[int, str]:
    """Run `openssl ocsp` without blocking the event loop that serves it."""
    proc = await asyncio.create_subprocess_exec("openssl", "ocsp", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, env=dict(os.environ))
    out, _ = await proc.communicate()
    return proc.returncode, out.decode(errors="replace")


UNSUPPORTED_HASH = core.ObjectIdentifier("2.16.840.1.101.3.4.2.3")  # SHA-512
