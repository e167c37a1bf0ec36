"""OCSP (RFC 6960, the RFC 5019 lightweight profile, the RFC 8954 nonce): parse requests defensively,
resolve their issuer, build the ResponseData to be signed and assemble the signed response.

Pure: no I/O, the time is passed in. Protocol failures are values (ResponseStatus), never exceptions:
any exception raised while decoding hostile DER becomes malformedRequest.

Choices where the RFCs leave room (documented here, tested in tests/unit/test_ocsp.py):
- CertID hash algorithms: SHA-1 (RFC 5019 2.1.1) and SHA-256 (RFC 9919). A well-formed CertID with any
  other hash algorithm cannot be matched to an issuer, so the responder is "not capable of responding
  authoritatively" and answers `unauthorized` (RFC 6960 section 2.3, RFC 5019 section 2.2.3). A
  CertID whose hash lengths do not match its algorithm is malformed.
- Several CertIDs in one request: at most ``max_certs``; they must all name the same issuer (one CA key
  generation), because a delegated responder may only answer for the CA that certified it
  (RFC 6960 4.2.2.2). Otherwise, and for any issuer we do not serve, `unauthorized`.
- Nonce: 1 to 32 octets, echoed; 0 or more than 32 octets is malformedRequest (RFC 8954 section 2.1).
- An unknown request extension marked critical is malformedRequest (RFC 6960 4.4: critical extensions
  that are not understood may not be ignored); non-critical ones are ignored.
"""
from __future__ import annotations

import datetime as dt
import enum
import hashlib
from dataclasses import dataclass

from asn1crypto import core, ocsp as aocsp, x509 as ax509

from . import der
from .algorithms import SignatureAlgorithm
from .ca import Issuer

MAX_NONCE_OCTETS = 32  # RFC 8954 section 2.1
_HASH_LENGTHS = {"sha1": 20, "sha256": 32}
_HASH_OIDS = {"1.3.14.3.2.26": "sha1", "2.16.840.1.101.3.4.2.1": "sha256"}


class ResponseStatus(enum.IntEnum):
    """OCSPResponseStatus (RFC 6960 section 4.2.1); 4 is not used."""

    successful = 0
    malformed_request = 1
    internal_error = 2
    try_later = 3
    sig_required = 5
    unauthorized = 6


def error_response(status: ResponseStatus) -> bytes:
    """An OCSPResponse with only a responseStatus (no responseBytes), as RFC 6960 4.2.1 prescribes."""
    if status == ResponseStatus.successful:
        raise ValueError("a successful response needs responseBytes")
    return bytes((0x30, 0x03, 0x0A, 0x01, int(status)))


@dataclass(frozen=True)
class CertRequest:
    """One CertID of a request. ``cert_id_der`` is echoed unchanged in the SingleResponse, so a client
    matching on the CertID it sent finds its answer (RFC 6960 4.2.2.3)."""

    cert_id_der: bytes
    hash_algorithm: str  # "sha1" | "sha256" | the dotted OID of an unsupported algorithm
    name_hash: bytes
    key_hash: bytes
    serial: int


@dataclass(frozen=True)
class ParsedRequest:
    certs: tuple[CertRequest, ...]
    nonce: bytes | None  # the Nonce value (the inner OCTET STRING), 1 to 32 octets

    @property
    def cert_key(self) -> bytes:
        """The CertIDs as one byte string: what a nonce-free answer depends on (a cache key)."""
        return b"".join(c.cert_id_der for c in self.certs)


def parse_request(data: bytes, *, max_certs: int = 10) -> ParsedRequest | ResponseStatus:
    """Decode an OCSPRequest; returns ParsedRequest or ResponseStatus.malformed_request, never raises."""
    try:
        return _parse(data, max_certs)
    except Exception:  # hostile DER can make asn1crypto raise anything: it is a malformed request
        return ResponseStatus.malformed_request


def _critical_unknown(extensions, known: tuple[str, ...]) -> bool:
    for ext in extensions:
        if ext["extn_id"].native not in known and ext["critical"].native:
            return True
    return False


def _parse(data: bytes, max_certs: int) -> ParsedRequest | ResponseStatus:
    malformed = ResponseStatus.malformed_request
    if not data or data[0] != 0x30:
        return malformed
    req = aocsp.OCSPRequest.load(data, strict=True)  # strict: trailing bytes are an error
    tbs = req["tbs_request"]
    if tbs["version"].native != "v1":
        return malformed
    items = tbs["request_list"]
    if not 1 <= len(items) <= max_certs:
        return malformed
    certs = []
    for item in items:
        cid = item["req_cert"]
        oid = cid["hash_algorithm"]["algorithm"].dotted
        alg = _HASH_OIDS.get(oid, oid)
        name_hash = cid["issuer_name_hash"].native
        key_hash = cid["issuer_key_hash"].native
        serial = cid["serial_number"].native
        if not isinstance(serial, int) or not isinstance(name_hash, bytes) or not isinstance(key_hash, bytes):
            return malformed
        expected = _HASH_LENGTHS.get(alg)
        if expected is not None and (len(name_hash) != expected or len(key_hash) != expected):
            return malformed
        exts = item["single_request_extensions"]
        if exts.native is not None and _critical_unknown(exts, ()):
            return malformed
        certs.append(CertRequest(cid.dump(), alg, name_hash, key_hash, serial))
    nonce = None
    exts = tbs["request_extensions"]
    if exts.native is not None:
        for ext in exts:
            name = ext["extn_id"].native
            if name == "nonce":
                value = ext["extn_value"].parsed
                if not isinstance(value, core.OctetString):
                    return malformed
                nonce = value.native
                if not 1 <= len(nonce) <= MAX_NONCE_OCTETS:
                    return malformed
            elif ext["critical"].native:
                return malformed
        # Touch every extension value once so that bad DER anywhere is found here, not later.
        exts.native
    return ParsedRequest(tuple(certs), nonce)


# -- issuers ------------------------------------------------------------------------------------------

def _spki_bits(issuer: Issuer) -> bytes:
    return issuer.certificate["tbs_certificate"]["subject_public_key_info"]["public_key"].contents[1:]


class IssuerIndex:
    """Issuers by CertID hashes (issuerNameHash, issuerKeyHash) for SHA-1 and SHA-256."""

    def __init__(self, issuers):
        self._by_hashes: dict[tuple[str, bytes, bytes], Issuer] = {}
        for issuer in issuers:
            bits = _spki_bits(issuer)
            for alg in _HASH_LENGTHS:
                key = (alg, hashlib.new(alg, issuer.name_der).digest(), hashlib.new(alg, bits).digest())
                self._by_hashes[key] = issuer

    def __len__(self) -> int:
        return len(self._by_hashes) // len(_HASH_LENGTHS)

    def find(self, cert: CertRequest) -> Issuer | None:
        return self._by_hashes.get((cert.hash_algorithm, cert.name_hash, cert.key_hash))

    def resolve(self, parsed: ParsedRequest) -> Issuer | ResponseStatus:
        """The one issuer every CertID of the request names, or `unauthorized` (see module docstring)."""
        issuer = None
        for cert in parsed.certs:
            found = self.find(cert)
            if found is None or (issuer is not None and found is not issuer):
                return ResponseStatus.unauthorized
            issuer = found
        return issuer


# -- statuses and responses ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CertStatus:
    """The status to state for one certificate (RFC 6960 4.2.1 CertStatus)."""

    kind: str  # good | revoked | unknown
    revoked_at: dt.datetime | None = None
    reason: int | None = None  # CRLReason; None when absent (unspecified is not stated, as in the CRL)

    @property
    def key(self) -> str:
        """Identifies the status: an answer signed for one key is correct for as long as the key holds."""
        if self.kind != "revoked":
            return self.kind
        return f"revoked|{int(self.revoked_at.timestamp())}|{self.reason}"

    @property
    def label(self) -> str:
        return "hold" if self.kind == "revoked" and self.reason == 6 else self.kind


GOOD = CertStatus("good")
UNKNOWN = CertStatus("unknown")


def status_from_record(*, exists: bool, status: str | None, reason: int | None,
                       since: dt.datetime | None) -> CertStatus:
    """The OCSP status of a certificate from its one status (valid, held or revoked, with the reason and
    revocationDate of the revocation in force). An accepted online revocation is not a status: the
    certificate answers what it was (good, or certificateHold) until the revocation takes effect."""
    if not exists:
        return UNKNOWN
    if status == "valid":
        return GOOD
    if status not in ("held", "revoked") or since is None or reason is None:
        raise ValueError(f"inconsistent certificate status {status!r}")
    return CertStatus("revoked", since, None if reason == 0 else reason)


def responder_key_hash(certificate_der: bytes) -> bytes:
    """ResponderID byKey: SHA-1 of the responder's subjectPublicKey BIT STRING value (RFC 6960 4.2.1)."""
    cert = ax509.Certificate.load(certificate_der)
    return hashlib.sha1(cert["tbs_certificate"]["subject_public_key_info"]["public_key"].contents[1:]).digest()


_GOOD = b"\x80\x00"  # [0] IMPLICIT NULL
_UNKNOWN = b"\x82\x00"  # [2] IMPLICIT NULL
_NONCE_OID = b"\x06\x09\x2b\x06\x01\x05\x05\x07\x30\x01\x02"  # id-pkix-ocsp-nonce
_BASIC_OID = b"\x06\x09\x2b\x06\x01\x05\x05\x07\x30\x01\x01"  # id-pkix-ocsp-basic


def _cert_status(status: CertStatus) -> bytes:
    if status.kind == "good":
        return _GOOD
    if status.kind == "unknown":
        return _UNKNOWN
    info = der.generalized_time(status.revoked_at)
    if status.reason is not None:
        info += der.tlv(0xA0, b"\x0a\x01" + bytes((status.reason,)))  # [0] EXPLICIT CRLReason
    return der.tlv(0xA1, info)  # [1] IMPLICIT RevokedInfo


def response_data(*, responder_key_hash: bytes, produced_at: dt.datetime,
                  singles: list[tuple[bytes, CertStatus]], this_update: dt.datetime,
                  next_update: dt.datetime, nonce: bytes | None = None) -> bytes:
    """tbsResponseData DER (RFC 6960 4.2.1): version v1 (default, absent), responderID by key hash, one
    SingleResponse per (CertID DER, status), the nonce echoed as a response extension when the request
    had one (RFC 8954). Assembled directly: it is built for every signature, on the hot path of a miss."""
    if next_update <= this_update:
        raise ValueError("nextUpdate must be after thisUpdate")
    if len(responder_key_hash) != 20:
        raise ValueError("the responder key hash is a SHA-1 digest")
    times = der.generalized_time(this_update) + der.tlv(0xA0, der.generalized_time(next_update))
    responses = b"".join(der.tlv(0x30, cert_id_der + _cert_status(status) + times) for cert_id_der, status in singles)
    body = (der.tlv(0xA2, der.tlv(0x04, responder_key_hash)) + der.generalized_time(produced_at) + der.tlv(0x30, responses))
    if nonce is not None:
        if not 1 <= len(nonce) <= MAX_NONCE_OCTETS:
            raise ValueError("a nonce has 1 to 32 octets")
        ext = der.tlv(0x30, _NONCE_OID + der.tlv(0x04, der.tlv(0x04, nonce)))
        body += der.tlv(0xA1, der.tlv(0x30, ext))
    return der.tlv(0x30, body)


def assemble(tbs_der: bytes, alg: SignatureAlgorithm, signature: bytes, responder_certificate_der: bytes) -> bytes:
    """OCSPResponse(successful, BasicOCSPResponse) with the responder certificate included, so that a
    client can check the delegation (RFC 6960 4.2.2.2)."""
    basic = der.tlv(0x30, tbs_der + alg.identifier_der + der.tlv(0x03, b"\x00" + signature)
                 + der.tlv(0xA0, der.tlv(0x30, responder_certificate_der)))
    return der.tlv(0x30, b"\x0a\x01\x00" + der.tlv(0xA0, der.tlv(0x30, _BASIC_OID + der.tlv(0x04, basic))))


