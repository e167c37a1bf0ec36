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
        fast = _parse_fast(data, max_certs)
    except Exception:  # not the common shape after all: the general decoder decides
        fast = None
    if fast is not None:
        return fast
    try:
        return _parse(data, max_certs)
    except Exception:  # hostile DER can make asn1crypto raise anything: it is a malformed request
        return ResponseStatus.malformed_request


# -- the common shape, without asn1crypto ------------------------------------------------------------
#
# Nearly every request is one shape: DER, no version field, no requestorName, no signature, 1 to
# max_certs CertIDs with SHA-1 or SHA-256 (parameters NULL or absent), no per-CertID extensions, and
# either no extensions or a single non-critical nonce of 1 to 32 octets. _parse_fast decodes exactly
# that shape (a few microseconds instead of asn1crypto's tree of objects) and returns None for anything
# else, which then goes to _parse: so it may only accept what _parse accepts, with the same result
# (tests/unit/test_ocsp_fast_parse.py compares the two on valid, mutated and random requests).

_FAST_HASHES = {b"\x06\x05\x2b\x0e\x03\x02\x1a": "sha1",
                b"\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01": "sha256"}
_NONCE_EXT_OID = b"\x06\x09\x2b\x06\x01\x05\x05\x07\x30\x01\x02"  # id-pkix-ocsp-nonce


def _tlv_at(data: bytes, pos: int, end: int, tag: int) -> tuple[int, int] | None:
    """(content start, content end) of the DER element with ``tag`` at ``pos``, which must end by ``end``;
    None if the tag differs or the length is not a minimal definite length of at most two octets."""
    if pos + 2 > end or data[pos] != tag:
        return None
    n = data[pos + 1]
    pos += 2
    if n >= 0x80:
        if n == 0x81:
            if pos >= end:
                return None
            n = data[pos]
            if n < 0x80:
                return None
            pos += 1
        elif n == 0x82:
            if pos + 2 > end:
                return None
            n = (data[pos] << 8) | data[pos + 1]
            if n < 0x100:
                return None
            pos += 2
        else:
            return None
    if pos + n > end:
        return None
    return pos, pos + n


def _parse_fast(data: bytes, max_certs: int) -> ParsedRequest | None:
    top = _tlv_at(data, 0, len(data), 0x30)
    if top is None or top[1] != len(data):  # trailing bytes: _parse decides
        return None
    tbs = _tlv_at(data, top[0], top[1], 0x30)
    if tbs is None or tbs[1] != top[1]:  # optionalSignature present
        return None
    pos, tbs_end = tbs
    items = _tlv_at(data, pos, tbs_end, 0x30)  # requestList (a version or requestorName field: None)
    if items is None:
        return None
    pos, list_end = items
    certs = []
    while pos < list_end:
        if len(certs) >= max_certs:
            return None
        item = _tlv_at(data, pos, list_end, 0x30)
        if item is None:
            return None
        cid = _tlv_at(data, item[0], item[1], 0x30)
        if cid is None or cid[1] != item[1]:  # singleRequestExtensions present
            return None
        p, cid_end = cid
        alg_id = _tlv_at(data, p, cid_end, 0x30)
        if alg_id is None:
            return None
        oid = _tlv_at(data, alg_id[0], alg_id[1], 0x06)
        if oid is None:
            return None
        alg = _FAST_HASHES.get(data[alg_id[0]:oid[1]])
        if alg is None or data[oid[1]:alg_id[1]] not in (b"", b"\x05\x00"):
            return None
        name = _tlv_at(data, alg_id[1], cid_end, 0x04)
        if name is None:
            return None
        key = _tlv_at(data, name[1], cid_end, 0x04)
        if key is None:
            return None
        serial = _tlv_at(data, key[1], cid_end, 0x02)
        if serial is None or serial[1] != cid_end:
            return None
        s0, s1 = serial
        if s1 == s0 or (s1 - s0 > 1 and (data[s0] == 0 and data[s0 + 1] < 0x80
                                        or data[s0] == 0xFF and data[s0 + 1] >= 0x80)):
            return None  # empty or not minimal: _parse decides
        name_hash, key_hash = data[name[0]:name[1]], data[key[0]:key[1]]
        if len(name_hash) != _HASH_LENGTHS[alg] or len(key_hash) != _HASH_LENGTHS[alg]:
            return None
        certs.append(CertRequest(data[item[0]:cid_end], alg, name_hash, key_hash,
                                 int.from_bytes(data[s0:s1], "big", signed=True)))
        pos = item[1]
    if not certs:
        return None
    nonce = None
    if list_end != tbs_end:
        # requestExtensions [2] EXPLICIT: exactly one extension, the nonce, not marked critical.
        exts = _tlv_at(data, list_end, tbs_end, 0xA2)
        if exts is None or exts[1] != tbs_end:
            return None
        seq = _tlv_at(data, exts[0], exts[1], 0x30)
        if seq is None or seq[1] != exts[1]:
            return None
        ext = _tlv_at(data, seq[0], seq[1], 0x30)
        if ext is None or ext[1] != seq[1] or data[ext[0]:ext[0] + len(_NONCE_EXT_OID)] != _NONCE_EXT_OID:
            return None
        value = _tlv_at(data, ext[0] + len(_NONCE_EXT_OID), ext[1], 0x04)
        if value is None or value[1] != ext[1]:
            return None
        inner = _tlv_at(data, value[0], value[1], 0x04)
        if inner is None or inner[1] != value[1] or not 1 <= inner[1] - inner[0] <= MAX_NONCE_OCTETS:
            return None
        nonce = data[inner[0]:inner[1]]
    return ParsedRequest(tuple(certs), nonce)


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


_TIMES: dict[dt.datetime, bytes] = {}


def _generalized_time(value: dt.datetime) -> bytes:
    """der.generalized_time, remembered: the answers signed within one second share their times (about
    4 µs of the event loop's work per answer otherwise)."""
    encoded = _TIMES.get(value)
    if encoded is None:
        if len(_TIMES) >= 64:
            _TIMES.clear()
        encoded = _TIMES[value] = der.generalized_time(value)
    return encoded


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
    this_der = _generalized_time(this_update)
    times = this_der + der.tlv(0xA0, _generalized_time(next_update))
    responses = b"".join(der.tlv(0x30, cert_id_der + _cert_status(status) + times) for cert_id_der, status in singles)
    produced_der = this_der if produced_at == this_update else _generalized_time(produced_at)
    body = (der.tlv(0xA2, der.tlv(0x04, responder_key_hash)) + produced_der + der.tlv(0x30, responses))
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


