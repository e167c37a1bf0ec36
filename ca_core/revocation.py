"""Revocation reasons and the CRL entry DER that a revocation becomes (RFC 5280 section 5.3).

A revoked entry never changes, so it is encoded once, at revocation, stored, and streamed by the CRL
publisher (docs/architecture.md, CRL publication).
"""
from __future__ import annotations

import datetime as dt
import enum

from . import der


class Reason(enum.IntEnum):
    """CRLReason (RFC 5280 section 5.3.1)."""

    unspecified = 0
    key_compromise = 1
    ca_compromise = 2
    affiliation_changed = 3
    superseded = 4
    cessation_of_operation = 5
    certificate_hold = 6
    remove_from_crl = 8
    privilege_withdrawn = 9
    aa_compromise = 10


_REASON_CODE = der.tlv(der.OID, bytes.fromhex("551d15"))  # id-ce-cRLReasons 2.5.29.21
_INVALIDITY_DATE = der.tlv(der.OID, bytes.fromhex("551d18"))  # id-ce-invalidityDate 2.5.29.24


def encode_entry(serial: int, revoked_at: dt.datetime, reason: Reason,
                 invalidity_date: dt.datetime | None = None) -> bytes:
    """revokedCertificates entry: serial, revocationDate, reasonCode unless unspecified (RFC 5280
    5.3.1: SHOULD be absent rather than unspecified), invalidityDate where given (5.3.2, GeneralizedTime).
    Written with ca_core.der: the feed encodes tens of thousands per batch."""
    exts = b""
    if reason != Reason.unspecified:
        exts += der.sequence(_REASON_CODE, der.octet_string(der.tlv(0x0A, bytes((int(reason),)))))
    if invalidity_date is not None:
        exts += der.sequence(_INVALIDITY_DATE, der.octet_string(der.generalized_time(invalidity_date)))
    return der.sequence(der.integer(serial), der.time(revoked_at), der.sequence(exts) if exts else b"")
