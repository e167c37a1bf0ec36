"""Window requests (revocations, holds, releases): idempotency per terminal and request_id."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StoredRequest:
    action: str
    body_hash: bytes
    response: dict


async def claim(conn, *, client_id: int, request_id: str, action: str, body_hash: bytes,
                operator_id: str) -> int | None:
    """Take the request id in the caller's transaction; None when it was already used (committed).
    A concurrent transaction with the same id makes this wait until it ends."""
    return await conn.fetchval(
        "INSERT INTO window_request (client_id, request_id, action, body_hash, operator_id, response)"
        " VALUES ($1,$2,$3,$4,$5,'{}') ON CONFLICT (client_id, request_id) DO NOTHING RETURNING id",
        client_id, request_id, action, body_hash, operator_id)


async def get(conn, *, client_id: int, request_id: str) -> StoredRequest | None:
    row = await conn.fetchrow("SELECT action, body_hash, response FROM window_request"
                              " WHERE client_id = $1 AND request_id = $2", client_id, request_id)
    return StoredRequest(row["action"], bytes(row["body_hash"]), row["response"]) if row else None


async def set_response(conn, request_row_id: int, response: dict) -> None:
    await conn.execute("UPDATE window_request SET response = $2 WHERE id = $1", request_row_id, response)

