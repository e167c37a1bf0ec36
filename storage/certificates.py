"""Certificates: allocation of ids (CRL partitions) and look-ups (storage.issuance writes them)."""
from __future__ import annotations


from ca_core.kinds import KINDS
from ca_core.records import CertificateRecord
from ca_core.serials import serial_bytes

# The columns record_of() reads; other storage modules select them too.
COLUMNS = ("id, ca_generation_id, serial, kind, resident_hash, municipality_code, partition, not_before,"
         " not_after, status, der, status_reason, status_at")


def record_of(row) -> CertificateRecord:
    return CertificateRecord(
        id=row["id"], ca_generation_id=row["ca_generation_id"], serial=int.from_bytes(row["serial"], "big"),
        kind=row["kind"], resident_hash=bytes(row["resident_hash"]), municipality_code=row["municipality_code"],
        partition=row["partition"], not_before=row["not_before"], not_after=row["not_after"],
        status=row["status"], der=bytes(row["der"]), status_reason=row["status_reason"], status_at=row["status_at"])


async def allocate_ids(conn, count: int) -> list[int]:
    """Certificate ids, taken before signing: an id decides the CRL partition (id // partition_size)."""
    rows = await conn.fetch("SELECT nextval('certificate_id_seq') AS id FROM generate_series(1, $1)", count)
    return [r["id"] for r in rows]


async def by_serial(conn, serial: int, *, for_update: bool = False) -> CertificateRecord | None:
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM certificate WHERE serial = $1"
                              + (" FOR UPDATE" if for_update else ""), serial_bytes(serial))
    return record_of(row) if row else None


async def live_of_resident(conn, resident_hash: bytes, kinds=KINDS, *,
                           for_update: bool = False) -> list[CertificateRecord]:
    """The resident's certificates that are not revoked (valid or held), of the given kinds."""
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM certificate WHERE resident_hash = $1 AND kind = ANY($2::text[])"
        " AND status <> 'revoked' ORDER BY id" + (" FOR UPDATE" if for_update else ""),
        resident_hash, list(kinds))
    return [record_of(r) for r in rows]


async def of_issuance(conn, issuance_id: int) -> list[CertificateRecord]:
    rows = await conn.fetch(f"SELECT {COLUMNS} FROM certificate WHERE issuance_id = $1 ORDER BY kind DESC",
                            issuance_id)
    return [record_of(r) for r in rows]
