"""Revocation reasons and the CRL entry DER that a revocation becomes (RFC 5280 section 5.3).

A revoked entry never changes, so it is encoded once, at revocation, stored, and streamed by the CRL
publisher (DESIGN.md).
"""
from __future__ import annotations

import datetime as dt
import enum

from asn1crypto import crl as acrl, x509 as ax509

from .profiles import x509_time


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


def encode_entry(serial: int, revoked_at: dt.datetime, reason: Reason,
                 invalidity_date: dt.datetime | None = None) -> bytes:
    """revokedCertificates entry: serial, revocationDate, reasonCode unless unspecified (RFC 5280
    5.3.1: SHOULD be absent rather than unspecified), invalidityDate where given (5.3.2)."""
    exts = []
    if reason != Reason.unspecified:
        exts.append(acrl.CRLEntryExtension({
            "extn_id": "crl_reason", "critical": False, "extn_value": acrl.CRLReason(int(reason))}))
    if invalidity_date is not None:
        exts.append(acrl.CRLEntryExtension({
            "extn_id": "invalidity_date", "critical": False,
            "extn_value": ax509.GeneralizedTime(invalidity_date.astimezone(dt.timezone.utc).replace(microsecond=0))}))
    entry = {"user_certificate": serial, "revocation_date": x509_time(revoked_at)}
    if exts:
        entry["crl_entry_extensions"] = exts
    return acrl.RevokedCertificate(entry).dump()
