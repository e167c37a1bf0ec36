"""Domain records that storage returns (never database rows)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class CertificateRecord:
    id: int
    ca_generation_id: int
    serial: int
    kind: str
    resident_hash: bytes
    municipality_code: str
    partition: int
    not_before: dt.datetime
    not_after: dt.datetime
    status: str  # valid | held | revoked (derived by the database from the revocation in force)
    der: bytes
    status_reason: int | None = None  # CRLReason of the revocation or hold in force
    status_at: dt.datetime | None = None  # its revocationDate


@dataclass(frozen=True)
class RevocationRecord:
    id: int
    certificate_id: int
    ca_generation_id: int
    serial: int
    partition: int
    reason: int
    revoked_at: dt.datetime
    effective_at: dt.datetime | None
    invalidity_date: dt.datetime | None
    source: str
    source_ref: str | None
    released_at: dt.datetime | None
