"""API clients (terminals, feed, verifiers), known by a hash of their bearer credential."""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from storage.status_notices import CLIENTS_CHANGED, STATUS_CHANNEL


@dataclass(frozen=True)
class Client:
    id: int
    kind: str  # terminal | national | feed | verifier
    name: str
    municipality_code: str | None


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


async def find_by_token(conn, token: str) -> Client | None:
    row = await conn.fetchrow(
        "SELECT id, kind, name, municipality_code FROM client WHERE token_hash = $1 AND disabled_at IS NULL",
        token_hash(token))
    return Client(row["id"], row["kind"], row["name"], row["municipality_code"]) if row else None


async def find_by_name(conn, name: str) -> Client | None:
    row = await conn.fetchrow("SELECT id, kind, name, municipality_code FROM client WHERE name = $1", name)
    return Client(row["id"], row["kind"], row["name"], row["municipality_code"]) if row else None


async def register(conn, *, kind: str, name: str, municipality_code: str | None = None) -> tuple[Client, str]:
    """Register a client; returns it with its new bearer credential (shown once, stored only hashed)."""
    token = f"shm_{kind[0]}_{secrets.token_urlsafe(32)}"
    row = await conn.fetchrow(
        "INSERT INTO client (kind, name, token_hash, municipality_code) VALUES ($1,$2,$3,$4)"
        " RETURNING id", kind, name, token_hash(token), municipality_code)
    return Client(row["id"], kind, name, municipality_code), token




async def rotate_token(conn, client_id: int) -> str:
    """Issue a new credential for a client; the old one stops working (every process is told)."""
    token = f"shm_r_{secrets.token_urlsafe(32)}"
    async with conn.transaction():
        await conn.execute("UPDATE client SET token_hash = $2 WHERE id = $1", client_id, token_hash(token))
        await conn.execute("SELECT pg_notify($1, $2)", STATUS_CHANNEL, CLIENTS_CHANGED)
    return token


async def disable(conn, client_id: int) -> bool:
    """Disable a client's credential (kept for the audit trail); every process is told. False when it
    was disabled already."""
    async with conn.transaction():
        done = await conn.fetchval("UPDATE client SET disabled_at = now() WHERE id = $1 AND disabled_at IS NULL"
                                   " RETURNING true", client_id)
        await conn.execute("SELECT pg_notify($1, $2)", STATUS_CHANNEL, CLIENTS_CHANGED)
    return bool(done)


@dataclass(frozen=True)
class ClientRow:
    name: str
    kind: str
    municipality_code: str | None
    created_at: object
    disabled_at: object


async def list_all(conn) -> list[ClientRow]:
    rows = await conn.fetch("SELECT name, kind, municipality_code, created_at, disabled_at FROM client ORDER BY kind, name")
    return [ClientRow(r["name"], r["kind"], r["municipality_code"], r["created_at"], r["disabled_at"]) for r in rows]
