"""Issuance records: the idempotency key, certificate rows and their audit records, in few round trips.
Both statements take many issuances at once (a batch from a terminal); a single request is a batch of one."""
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


@dataclass(frozen=True)
class Asked:
    """One issuance asked for, as the preflight needs it."""

    request_id: str
    municipality_code: str
    kinds: list[str]
    resident_hash: bytes


async def preflight(conn, *, client_id: int, asked: list[Asked]) -> list[Preflight]:
    """The preflight of each issuance of ``asked``, in its order, in one statement."""
    rows = await conn.fetch(
        "SELECT i.id, i.body_hash, m.name_romaji AS municipality,"
        " ARRAY(SELECT nextval('certificate_id_seq') FROM generate_series(1, cardinality(k.kinds))) AS ids,"
        " (SELECT max(not_after) FROM certificate WHERE resident_hash = u.rhash AND kind = ANY(k.kinds)"
        "   AND status = 'valid') AS live_until,"
        " EXISTS (SELECT 1 FROM certificate WHERE resident_hash = u.rhash AND kind = ANY(k.kinds)"
        "   AND status <> 'revoked') AS has_live,"
        " EXISTS (SELECT 1 FROM free_reissue WHERE resident_hash = u.rhash AND used_at IS NULL) AS free_reissue"
        " FROM unnest($2::text[], $3::text[], $4::text[], $5::bytea[]) WITH ORDINALITY"
        "   AS u(request_id, code, kinds, rhash, ord)"
        " CROSS JOIN LATERAL (SELECT string_to_array(u.kinds, ',') AS kinds) AS k"
        " LEFT JOIN municipality m ON m.code = u.code"
        " LEFT JOIN issuance i ON i.client_id = $1 AND i.request_id = u.request_id"
        " ORDER BY u.ord",
        client_id, [a.request_id for a in asked], [a.municipality_code for a in asked],
        [",".join(a.kinds) for a in asked], [a.resident_hash for a in asked])
    return [Preflight(r["id"], bytes(r["body_hash"]) if r["body_hash"] is not None else None, r["municipality"],
                      list(r["ids"]), r["live_until"], r["has_live"], r["free_reissue"]) for r in rows]


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


@dataclass(frozen=True)
class NewIssuance:
    """One issuance to record: its idempotency key, its signed certificates and whose they are."""

    request_id: str
    body_hash: bytes
    resident_hash: bytes
    municipality_code: str
    certificates: list[NewCertificate]
    consume_free_reissue: bool = False  # the resident's free reissue is used by this one


async def record(conn, issuances: list[NewIssuance], *, client_id: int, operator_id: str,
                 not_before: dt.datetime) -> dict[str, int]:
    """One statement, atomic on its own: for each issuance the idempotency record, the certificates, one
    audit record each, and (``consume_free_reissue``) the resident's free reissue marked used. Returns the
    issuance id of each request_id recorded; one that another request with its request_id committed first
    is left out (and nothing of it is written). A certificate refused by a constraint (the resident's
    one live certificate of a kind) fails the whole statement."""
    certs = [(n, c) for n, i in enumerate(issuances, 1) for c in i.certificates]
    rows = await conn.fetch(
        "WITH u AS (SELECT * FROM unnest($3::text[], $4::bytea[], $5::bytea[], $6::text[], $7::bool[])"
        "   WITH ORDINALITY AS u(request_id, body_hash, rhash, code, consume, ord)),"
        " claim AS (INSERT INTO issuance (client_id, request_id, body_hash, operator_id)"
        "  SELECT $1, u.request_id, u.body_hash, $2 FROM u ORDER BY u.ord"
        "  ON CONFLICT (client_id, request_id) DO NOTHING RETURNING id, request_id),"
        " cl AS (SELECT claim.id, u.* FROM claim JOIN u USING (request_id)),"
        " c AS (INSERT INTO certificate (id, ca_generation_id, serial, kind, resident_hash, municipality_code,"
        "  partition, not_before, not_after, der, issuance_id)"
        "  SELECT v.id, v.gen, v.serial, v.kind, cl.rhash, cl.code, v.part, $8, v.not_after, v.der, cl.id"
        "  FROM unnest($9::int[], $10::bigint[], $11::int[], $12::bytea[], $13::text[], $14::int[], $15::bytea[],"
        "   $16::timestamptz[]) AS v(ord, id, gen, serial, kind, part, der, not_after)"
        "  JOIN cl ON cl.ord = v.ord ORDER BY v.ord, v.id"
        "  RETURNING serial, kind, partition, ca_generation_id, issuance_id),"
        " a AS (INSERT INTO audit_log (client_id, operator_id, action, serial, request_id, details)"
        "  SELECT $1, $2, 'issue', c.serial, cl.request_id, jsonb_build_object('kind', c.kind,"
        "   'partition', c.partition, 'issuer', l.label)"
        "  FROM c JOIN cl ON cl.id = c.issuance_id"
        "  JOIN (SELECT DISTINCT gen, label FROM unnest($11::int[], $17::text[]) AS l(gen, label)) AS l"
        "   ON l.gen = c.ca_generation_id),"
        " f AS (UPDATE free_reissue SET used_at = $8 WHERE used_at IS NULL"
        "  AND resident_hash IN (SELECT rhash FROM cl WHERE consume))"
        " SELECT request_id, id FROM claim",
        client_id, operator_id,
        [i.request_id for i in issuances], [i.body_hash for i in issuances], [i.resident_hash for i in issuances],
        [i.municipality_code for i in issuances], [i.consume_free_reissue for i in issuances], not_before,
        [n for n, _ in certs], [c.id for _, c in certs], [c.ca_generation_id for _, c in certs],
        [c.serial for _, c in certs], [c.kind for _, c in certs], [c.partition for _, c in certs],
        [c.der for _, c in certs], [c.not_after for _, c in certs], [c.issuer_label for _, c in certs])
    return {r["request_id"]: r["id"] for r in rows}
