"""The audit trail: written in the same transaction as the action it records. No personal data."""
from __future__ import annotations


async def record(conn, *, action: str, client_id: int | None = None, operator_id: str | None = None,
                 serial: bytes | None = None, request_id: str | None = None, details: dict | None = None) -> None:
    await conn.execute(
        "INSERT INTO audit_log (client_id, operator_id, action, serial, request_id, details)"
        " VALUES ($1,$2,$3,$4,$5,$6)", client_id, operator_id, action, serial, request_id, details or {})
