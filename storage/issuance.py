"""Issuance records: the idempotency key, certificate rows and their audit records, in few round trips."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class Preflight:
    """What issuance needs before signing, read in one round trip."""

    existing_id: int | None  # an earlier issuance with the same request_id
    existing_hash: bytes | None
    municipality_name: str | None
    certificate_ids: list[int]  # fresh ids; an id decides the CRL partition
    latest_valid_not_after: dt.datetime | None  # of the resident's valid certificates of these kinds
    has_live: bool  # the resident holds a certificate of these kinds that is not revoked (valid or held)
    free_reissue: bool  # the resident is entitled to a free reissue (merger, address notation, ...) not yet used


async def preflight(conn, *, client_id: int, request_id: str, municipality_code: str, kinds: list[str],
                    resident_hash: bytes) -> Preflight:
    row = await conn.fetchrow(
        "SELECT i.id, i.body_hash,"
        " (SELECT name_romaji FROM municipality WHERE code = $3) AS municipality,"
        " ARRAY(SELECT nextval('certificate_id_seq') FROM generate_series(1, cardinality($4::text[]))) AS ids,"
        " (SELECT max(not_after) FROM certificate WHERE resident_hash = $5 AND kind = ANY($4::text[])"
        "   AND status = 'valid') AS live_until,"
        " EXISTS (SELECT 1 FROM certificate WHERE resident_hash = $5 AND kind = ANY($4::text[])"
        "   AND status <> 'revoked') AS has_live,"
        " EXISTS (SELECT 1 FROM free_reissue WHERE resident_hash = $5 AND used_at IS NULL) AS free_reissue"
        " FROM (SELECT 1) AS one LEFT JOIN issuance i ON i.client_id = $1 AND i.request_id = $2",
        client_id, request_id, municipality_code, kinds, resident_hash)
    return Preflight(row["id"], bytes(row["body_hash"]) if row["body_hash"] is not None else None,
                     row["municipality"], list(row["ids"]), row["live_until"], row["has_live"], row["free_reissue"])


async def find(conn, *, client_id: int, request_id: str) -> tuple[int, bytes] | None:
    row = await conn.fetchrow("SELECT id, body_hash FROM issuance WHERE client_id = $1 AND request_id = $2",
                              client_id, request_id)
    return (row["id"], bytes(row["body_hash"])) if row else None


@dataclass(frozen=True)
class NewCertificate:
    id: int
    ca_generation_id: int
    serial: bytes
    kind: str
    partition: int
    der: bytes
    issuer_label: str  # e.g. "signing-g1", for the audit record
    not_after: dt.datetime


async def record(conn, certs: list[NewCertificate], *, client_id: int, request_id: str, body_hash: bytes,
                 operator_id: str, resident_hash: bytes, municipality_code: str, not_before: dt.datetime,
                 consume_free_reissue: bool = False) -> int | None:
    """One statement, atomic on its own: the idempotency record, the certificates, one audit record
    each, and (``consume_free_reissue``) the resident's free reissue marked used. Returns the issuance
    id, or None (and writes nothing) when another request with this request_id committed first."""
    return await conn.fetchval(
        "WITH claim AS (INSERT INTO issuance (client_id, request_id, body_hash, operator_id)"
        "  VALUES ($11, $13, $15, $12) ON CONFLICT (client_id, request_id) DO NOTHING RETURNING id),"
        " c AS (INSERT INTO certificate (id, ca_generation_id, serial, kind, resident_hash, municipality_code,"
        "  partition, not_before, not_after, der, issuance_id)"
        "  SELECT u.id, u.gen, u.serial, u.kind, $5, $6, u.part, $7, u.not_after, u.der, claim.id"
        "  FROM unnest($1::bigint[], $2::int[], $3::bytea[], $4::text[], $9::int[], $10::bytea[], $8::timestamptz[])"
        "   AS u(id, gen, serial, kind, part, der, not_after) CROSS JOIN claim"
        "  RETURNING serial, kind, partition, ca_generation_id),"
        " a AS (INSERT INTO audit_log (client_id, operator_id, action, serial, request_id, details)"
        "  SELECT $11, $12, 'issue', c.serial, $13, jsonb_build_object('kind', c.kind, 'partition', c.partition,"
        "   'issuer', l.label) FROM c JOIN unnest($2::int[], $14::text[]) AS l(gen, label)"
        "   ON l.gen = c.ca_generation_id),"
        " f AS (UPDATE free_reissue SET used_at = $7 WHERE $16 AND resident_hash = $5 AND used_at IS NULL"
        "  AND EXISTS (SELECT 1 FROM claim))"
        " SELECT id FROM claim",
        [c.id for c in certs], [c.ca_generation_id for c in certs], [c.serial for c in certs],
        [c.kind for c in certs], resident_hash, municipality_code, not_before, [c.not_after for c in certs],
        [c.partition for c in certs], [c.der for c in certs], client_id, operator_id, request_id,
        [c.issuer_label for c in certs], body_hash, consume_free_reissue)
