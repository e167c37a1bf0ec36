"""CA generations and OCSP responder certificates."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ca_core.algorithms import algorithm_for
from ca_core.ca import Issuer

_COLS = "id, ca_id, generation, key_label, key_type, certificate, is_current"


@dataclass(frozen=True)
class IssuerRecord:
    issuer: Issuer
    is_current: bool


def _issuer(row) -> IssuerRecord:
    return IssuerRecord(Issuer(db_id=row["id"], ca_id=row["ca_id"], generation=row["generation"],
                               key_label=row["key_label"], algorithm=algorithm_for(row["key_type"]),
                               certificate_der=bytes(row["certificate"])), row["is_current"])


async def list_generations(conn) -> list[IssuerRecord]:
    rows = await conn.fetch(f"SELECT {_COLS} FROM ca_generation ORDER BY ca_id, generation")
    return [_issuer(r) for r in rows]


async def insert_generation(conn, *, ca_id: str, generation: int, key_label: str, key_type: str,
                            key_id: bytes, certificate: bytes, fingerprint: str, not_before: dt.datetime,
                            not_after: dt.datetime, make_current: bool) -> int:
    if make_current:
        await conn.execute("UPDATE ca_generation SET is_current = false WHERE ca_id = $1 AND is_current", ca_id)
    return await conn.fetchval(
        "INSERT INTO ca_generation (ca_id, generation, key_label, key_type, key_id, certificate,"
        " fingerprint_sha256, not_before, not_after, is_current) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)"
        " RETURNING id",
        ca_id, generation, key_label, key_type, key_id, certificate, fingerprint, not_before, not_after,
        make_current)


@dataclass(frozen=True)
class ResponderRecord:
    id: int
    ca_generation_id: int
    key_label: str
    certificate: bytes
    not_before: dt.datetime
    not_after: dt.datetime


async def latest_responders(conn) -> dict[int, ResponderRecord]:
    """The newest responder certificate of each CA generation."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (ca_generation_id) id, ca_generation_id, key_label, certificate, not_before,"
        " not_after FROM ocsp_responder ORDER BY ca_generation_id, not_after DESC, id DESC")
    return {r["ca_generation_id"]: ResponderRecord(r["id"], r["ca_generation_id"], r["key_label"],
                                                   bytes(r["certificate"]), r["not_before"], r["not_after"])
            for r in rows}


async def insert_responder(conn, *, ca_generation_id: int, key_label: str, certificate: bytes,
                           not_before: dt.datetime, not_after: dt.datetime) -> int:
    return await conn.fetchval(
        "INSERT INTO ocsp_responder (ca_generation_id, key_label, certificate, not_before, not_after)"
        " VALUES ($1,$2,$3,$4,$5) RETURNING id", ca_generation_id, key_label, certificate, not_before, not_after)


_CEREMONY_LOCK = 0x5348_4F4D_4549_0001  # one ceremony (or rollover, or responder renewal) at a time


async def lock_ceremony(conn) -> None:
    """Serialise key ceremonies across processes and hosts, until the caller's transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _CEREMONY_LOCK)


@dataclass(frozen=True)
class LinkRecord:
    ca_id: str
    new_generation: int
    old_generation: int
    direction: str  # new_with_old | old_with_new
    certificate: bytes


async def insert_link(conn, *, new_generation_id: int, old_generation_id: int, direction: str,
                      certificate: bytes) -> None:
    await conn.execute("INSERT INTO ca_link_certificate (new_generation_id, old_generation_id, direction, certificate)"
                       " VALUES ($1,$2,$3,$4)", new_generation_id, old_generation_id, direction, certificate)


async def list_links(conn) -> list[LinkRecord]:
    rows = await conn.fetch(
        "SELECT n.ca_id, n.generation AS new_generation, o.generation AS old_generation, l.direction, l.certificate"
        " FROM ca_link_certificate l JOIN ca_generation n ON n.id = l.new_generation_id"
        " JOIN ca_generation o ON o.id = l.old_generation_id ORDER BY n.ca_id, n.generation, l.direction")
    return [LinkRecord(r["ca_id"], r["new_generation"], r["old_generation"], r["direction"], bytes(r["certificate"]))
            for r in rows]


async def retired_generation_ids(conn) -> set[int]:
    return {r["id"] for r in await conn.fetch("SELECT id FROM ca_generation WHERE retired_at IS NOT NULL")}


async def retirement_due(conn, now: dt.datetime) -> list[int]:
    """Replaced generations not yet retired whose every certificate has expired."""
    rows = await conn.fetch(
        "SELECT g.id FROM ca_generation g WHERE NOT g.is_current AND g.retired_at IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM certificate c WHERE c.ca_generation_id = g.id AND c.not_after > $1)", now)
    return [r["id"] for r in rows]


async def retire(conn, generation_id: int, at: dt.datetime) -> None:
    await conn.execute("UPDATE ca_generation SET retired_at = $2 WHERE id = $1 AND retired_at IS NULL",
                       generation_id, at)


async def retired_at(conn) -> dict[int, dt.datetime]:
    return {r["id"]: r["retired_at"] for r in
            await conn.fetch("SELECT id, retired_at FROM ca_generation WHERE retired_at IS NOT NULL")}
