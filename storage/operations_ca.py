"""The operations CA: the issuer of client and server certificates of the private listener."""
from __future__ import annotations

import datetime as dt

from ca_core.algorithms import algorithm_for
from ca_core.ca import Issuer

OPERATIONS = "operations"  # the ca_id of its Issuer


def _issuer(row) -> Issuer:
    return Issuer(db_id=row["id"], ca_id=OPERATIONS, generation=row["generation"], key_label=row["key_label"],
                  algorithm=algorithm_for(row["key_type"]), certificate_der=bytes(row["certificate"]))


async def current(conn) -> Issuer | None:
    row = await conn.fetchrow("SELECT id, generation, key_label, key_type, certificate FROM operations_ca"
                              " ORDER BY generation DESC LIMIT 1")
    return _issuer(row) if row else None


async def insert(conn, *, generation: int, key_label: str, key_type: str, certificate: bytes,
                 not_after: dt.datetime) -> Issuer:
    row = await conn.fetchrow(
        "INSERT INTO operations_ca (generation, key_label, key_type, certificate, not_after)"
        " VALUES ($1,$2,$3,$4,$5) RETURNING id, generation, key_label, key_type, certificate",
        generation, key_label, key_type, certificate, not_after)
    return _issuer(row)


async def lock(conn) -> None:
    """Serialise creation of the operations CA between processes (inside a transaction)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('shomei-operations-ca'))")
