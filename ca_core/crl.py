"""CRLs (RFC 5280 section 5) encoded around a stream of stored entries.

A revoked entry's DER never changes, so it is encoded once at revocation (ca_core.revocation) and the
CRL is assembled around the stored bytes: this module encodes only what comes before the entries (the
TBSCertList header, whose lengths follow from the count and the total size of the entries) and what
comes after them (the extensions, then the signature). The caller hashes the bytes as they pass and
has the token sign the digest; no whole-CRL object is ever built.

Layout of a CertificateList (RFC 5280 5.1):

    SEQUENCE {                                  <- signed_prefix()
      SEQUENCE {                                <- tbs_header() ... (hashed)
        version v2, signature, issuer, thisUpdate, nextUpdate,
        SEQUENCE OF entry  (absent when empty)
        [0] Extensions                          <- tbs_trailer()   (hashed)
      }
      signatureAlgorithm, signatureValue        <- signed_suffix()
    }
"""
from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass

from asn1crypto import core, crl as acrl, x509 as ax509

from . import der
from .algorithms import SignatureAlgorithm
from .ca import Issuer
from .profiles import x509_time
from .revocation import Reason, encode_entry

_SEQUENCE = 0x30
_VERSION_V2 = bytes.fromhex("020101")  # Version ::= INTEGER { v1(0), v2(1) }: v2 because of extensions


@dataclass(frozen=True)
class CRLSpec:
    """Everything about one CRL except its entries.

    ``idp_url``: the partition URL, carried as a critical issuingDistributionPoint (RFC 5280 5.2.5)
    and equal to the cRLDistributionPoints of the partition's certificates; None for the full CRL.
    ``delta_base``: the base CRL number of a delta CRL (deltaCRLIndicator, critical, 5.2.4); a delta
    carries the same IDP as its base (same scope). ``freshest_url``: freshestCRL naming the delta of a
    complete CRL (5.2.6, never on a delta).
    """

    issuer: Issuer
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    idp_url: str | None = None
    delta_base: int | None = None
    freshest_url: str | None = None

    def __post_init__(self):
        if self.number < 0 or self.number.bit_length() > 159:
            raise ValueError("cRLNumber must be 0..2^159 (RFC 5280 5.2.3: at most 20 octets)")
        if self.next_update <= self.this_update:
            raise ValueError("nextUpdate must be after thisUpdate")
        if self.delta_base is not None and self.delta_base >= self.number:
            raise ValueError("a delta CRL's number must exceed its base CRL number")
        if self.delta_base is not None and self.freshest_url is not None:
            raise ValueError("freshestCRL must not appear in a delta CRL (RFC 5280 5.2.6)")

    @property
    def algorithm(self) -> SignatureAlgorithm:
        return self.issuer.algorithm


def _dp_name(url: str) -> ax509.DistributionPointName:
    return ax509.DistributionPointName(
        name="full_name", value=[ax509.GeneralName(name="uniform_resource_identifier", value=url)])


def _ext(name: str, value, critical: bool = False) -> acrl.TBSCertListExtension:
    return acrl.TBSCertListExtension({"extn_id": name, "critical": critical, "extn_value": value})


def extensions(spec: CRLSpec) -> acrl.TBSCertListExtensions:
    """authorityKeyIdentifier, cRLNumber, deltaCRLIndicator, issuingDistributionPoint, freshestCRL."""
    exts = [
        _ext("authority_key_identifier", ax509.AuthorityKeyIdentifier({"key_identifier": spec.issuer.key_id})),
        _ext("crl_number", core.Integer(spec.number)),
    ]
    if spec.delta_base is not None:
        exts.append(_ext("delta_crl_indicator", core.Integer(spec.delta_base), critical=True))
    if spec.idp_url is not None:
        exts.append(_ext("issuing_distribution_point",
                         acrl.IssuingDistributionPoint({"distribution_point": _dp_name(spec.idp_url)}),
                         critical=True))
    if spec.freshest_url is not None:
        exts.append(_ext("freshest_crl", ax509.CRLDistributionPoints([
            ax509.DistributionPoint({"distribution_point": _dp_name(spec.freshest_url)})])))
    return acrl.TBSCertListExtensions(exts)


@functools.lru_cache(maxsize=256)  # a spec is frozen; its encodings are asked for several times per CRL
def tbs_trailer(spec: CRLSpec) -> bytes:
    """crlExtensions [0] EXPLICIT, the last field of the TBSCertList."""
    body = extensions(spec).dump()
    return der.header(0xA0, len(body)) + body


@functools.lru_cache(maxsize=256)
def _fixed_fields(spec: CRLSpec) -> bytes:
    return (_VERSION_V2 + spec.algorithm.identifier_der + spec.issuer.name_der
            + x509_time(spec.this_update).dump() + x509_time(spec.next_update).dump())


def tbs_header(spec: CRLSpec, count: int, entries_length: int) -> bytes:
    """Everything of the TBSCertList before the first entry, for ``count`` entries whose DER totals
    ``entries_length`` octets. With no entries revokedCertificates is absent (RFC 5280 5.1.2.6)."""
    if (count == 0) != (entries_length == 0):
        raise ValueError("count and entries_length disagree")
    fixed = _fixed_fields(spec)
    revoked_header = der.header(_SEQUENCE, entries_length) if count else b""
    content = len(fixed) + len(revoked_header) + entries_length + len(tbs_trailer(spec))
    return der.header(_SEQUENCE, content) + fixed + revoked_header


def tbs_length(spec: CRLSpec, count: int, entries_length: int) -> int:
    return len(tbs_header(spec, count, entries_length)) + entries_length + len(tbs_trailer(spec))


def signed_suffix(alg: SignatureAlgorithm, signature: bytes) -> bytes:
    """signatureAlgorithm and signatureValue (a BIT STRING with no unused bits)."""
    return alg.identifier_der + der.header(0x03, len(signature) + 1) + b"\x00" + signature


def signed_prefix(tbs_len: int, suffix_len: int) -> bytes:
    """The outer SEQUENCE header of the CertificateList."""
    return der.header(_SEQUENCE, tbs_len + suffix_len)


def max_suffix_length(alg: SignatureAlgorithm) -> int:
    """Upper bound of signed_suffix(): the RSA modulus size, or 72 octets for a P-256 ECDSA-Sig-Value."""
    sig = alg.rsa_bits // 8 if alg.is_rsa else 72
    return len(signed_suffix(alg, b"\x00" * sig))


def assemble(spec: CRLSpec, entries: list[bytes], signature_for) -> bytes:
    """A whole CRL in memory (small CRLs and tests): ``signature_for(tbs_der) -> signature``."""
    body = b"".join(entries)
    tbs = tbs_header(spec, len(entries), len(body)) + body + tbs_trailer(spec)
    suffix = signed_suffix(spec.algorithm, signature_for(tbs))
    return signed_prefix(len(tbs), len(suffix)) + tbs + suffix


def remove_from_crl_entry(serial: int, revoked_at: dt.datetime) -> bytes:
    """A delta CRL entry telling that ``serial`` left the base CRL (hold released; RFC 5280 5.3.1)."""
    return encode_entry(serial, revoked_at, Reason.remove_from_crl)


# -- reading back what was published (serving: times and number without parsing the entries) -----

@dataclass(frozen=True)
class CRLInfo:
    this_update: dt.datetime
    next_update: dt.datetime | None
    number: int | None
    delta_base: int | None


def _tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at ``pos``."""
    tag = buf[pos]
    first = buf[pos + 1]
    if first < 0x80:
        return tag, pos + 2, pos + 2 + first
    n = first & 0x7F
    length = int.from_bytes(buf[pos + 2:pos + 2 + n], "big")
    return tag, pos + 2 + n, pos + 2 + n + length


def read_info(read_at) -> CRLInfo:
    """thisUpdate, nextUpdate, cRLNumber and delta base of a DER CRL, reading only its header and
    extensions through ``read_at(offset, size) -> bytes`` (the entries are skipped). Raises ValueError."""
    head = read_at(0, 8192)
    try:
        _t, pos, _e = _tlv(head, 0)          # CertificateList
        _t, pos, tbs_end = _tlv(head, pos)   # TBSCertList
        if head[pos] == 0x02:                # version
            pos = _tlv(head, pos)[2]
        pos = _tlv(head, pos)[2]             # signature AlgorithmIdentifier
        pos = _tlv(head, pos)[2]             # issuer
        end = _tlv(head, pos)[2]
        this_update = ax509.Time.load(head[pos:end]).native
        pos = end
        next_update = None
        if pos < tbs_end and head[pos] in (0x17, 0x18):
            end = _tlv(head, pos)[2]
            next_update = ax509.Time.load(head[pos:end]).native
            pos = end
        if pos < tbs_end and head[pos] == _SEQUENCE:  # revokedCertificates: skipped, never read
            pos = _tlv(head, pos)[2]
        number = base = None
        if pos < tbs_end:
            ext = read_at(pos, min(tbs_end - pos, 65536))
            if ext[0] != 0xA0:
                raise ValueError("unexpected field after revokedCertificates")
            _t, start, end = _tlv(ext, 0)
            for e in acrl.TBSCertListExtensions.load(ext[start:end]):
                if e["extn_id"].native == "crl_number":
                    number = e["extn_value"].native
                elif e["extn_id"].native == "delta_crl_indicator":
                    base = e["extn_value"].native
        return CRLInfo(this_update, next_update, number, base)
    except (IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"not a DER CRL: {exc}") from None


@dataclass(frozen=True)
class SignedLayout:
    """Where the signed part of a DER CRL lies, and its signature: what a host checks before serving a
    copy it did not make."""

    tbs_start: int
    tbs_end: int
    algorithm: bytes  # signatureAlgorithm, DER
    signature: bytes  # signatureValue's octets


def signed_layout(read_at, size: int) -> SignedLayout:
    """The TBSCertList's byte range and the signature of a DER CRL of ``size`` octets, read through
    ``read_at(offset, size)`` without touching the entries. Raises ValueError for anything that is
    not exactly one CertificateList of that size."""
    try:
        head = read_at(0, 16)
        _t, pos, outer_end = _tlv(head, 0)
        if head[0] != _SEQUENCE or outer_end != size:
            raise ValueError("the outer SEQUENCE does not span the file")
        tag, tbs_content, tbs_end = _tlv(head, pos)
        if tag != _SEQUENCE:
            raise ValueError("no TBSCertList")
        rest = read_at(tbs_end, size - tbs_end)
        if len(rest) != size - tbs_end or len(rest) > 4096:
            raise ValueError("unexpected data after the TBSCertList")
        tag, start, alg_end = _tlv(rest, 0)
        if tag != _SEQUENCE:
            raise ValueError("bad signatureAlgorithm")
        tag, start, end = _tlv(rest, alg_end)
        if tag != 0x03 or end != len(rest) or rest[start] != 0:
            raise ValueError("bad signatureValue")
        return SignedLayout(pos, tbs_end, bytes(rest[:alg_end]), bytes(rest[start + 1:end]))
    except (IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"not a DER CRL: {exc}") from None


def verify_digest(issuer: Issuer, layout: SignedLayout, digest: bytes) -> None:
    """Check that ``layout``'s signature is the issuer's over the TBSCertList whose SHA-256 is
    ``digest``; raises ValueError otherwise."""
    from cryptography import exceptions
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

    if layout.algorithm != issuer.algorithm.identifier_der:  # exactly the CA's (and the TBSCertList's)
        raise ValueError(f"the signatureAlgorithm is not the CA's ({issuer.algorithm.oid_name})")
    key = _public_key(issuer.certificate_der)
    prehashed = utils.Prehashed(hashes.SHA256())
    try:
        if issuer.algorithm.is_rsa:
            key.verify(layout.signature, digest, padding.PKCS1v15(), prehashed)
        else:
            key.verify(layout.signature, digest, ec.ECDSA(prehashed))
    except exceptions.InvalidSignature:
        raise ValueError("the signature does not verify with the CA's key") from None


@functools.lru_cache(maxsize=64)
def _public_key(certificate_der: bytes):
    from cryptography import x509

    return x509.load_der_x509_certificate(certificate_der).public_key()
