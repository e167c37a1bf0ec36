"""API clients (terminals, the call centre, the feed, OCSP verifiers). Terminals, the call centre and the
feed are known by the certificates the operations CA issued them (by serial); verifiers, which only
ask OCSP on the public listener, by a hash of a bearer credential."""
from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from storage.status_notices import CLIENTS_CHANGED, STATUS_CHANNEL

_COLS = "c.id, c.kind, c.name, c.municipality_code"


@dataclass(frozen=True)
class Client:
    id: int
    kind: str  # terminal | national | feed | verifier
    name: str
    municipality_code: str | None


def _client(row) -> Client | None:
    return Client(row["id"], row["kind"], row["name"], row["municipality_code"]) if row else None


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


async def find_by_token(conn, token: str) -> Client | None:
    return _client(await conn.fetchrow(
        f"SELECT {_COLS} FROM client c WHERE token_hash = $1 AND disabled_at IS NULL", token_hash(token)))


async def find_by_certificate(conn, serial: bytes) -> Client | None:
    """The enabled client a current (not retired, not expired) certificate of this serial belongs to."""
    return _client(await conn.fetchrow(
        f"SELECT {_COLS} FROM client_certificate cc JOIN client c ON c.id = cc.client_id"
        " WHERE cc.serial = $1 AND cc.retired_at IS NULL AND cc.not_after > now() AND c.disabled_at IS NULL",
        serial))


async def find_by_name(conn, name: str) -> Client | None:
    return _client(await conn.fetchrow(f"SELECT {_COLS} FROM client c WHERE name = $1", name))


async def register(conn, *, kind: str, name: str, municipality_code: str | None = None) -> Client:
    """Register a client (it has no credential until a certificate is recorded for it)."""
    row = await conn.fetchrow("INSERT INTO client (kind, name, municipality_code) VALUES ($1,$2,$3)"
                              " RETURNING id", kind, name, municipality_code)
    return Client(row["id"], kind, name, municipality_code)


async def register_verifier(conn, name: str) -> tuple[Client, str]:
    """Register an OCSP verifier; returns it with its bearer credential (shown once, stored hashed)."""
    token = f"shm_v_{secrets.token_urlsafe(32)}"
    row = await conn.fetchrow("INSERT INTO client (kind, name, token_hash) VALUES ('verifier', $1, $2)"
                              " RETURNING id", name, token_hash(token))
    return Client(row["id"], "verifier", name, None), token


async def rotate_token(conn, client_id: int) -> str:
    """A verifier's new credential; the old one stops working (every process is told)."""
    token = f"shm_v_{secrets.token_urlsafe(32)}"
    async with conn.transaction():
        await conn.execute("UPDATE client SET token_hash = $2 WHERE id = $1", client_id, token_hash(token))
        await conn.execute("SELECT pg_notify($1, $2)", STATUS_CHANNEL, CLIENTS_CHANGED)
    return token


async def add_certificate(conn, *, client_id: int, serial: bytes, operations_ca_id: int,
                          not_before: dt.datetime, not_after: dt.datetime, retire_others: bool) -> int:
    """Record a certificate issued to a client; with ``retire_others`` (rotation) its earlier
    certificates stop working at once on every process. Returns how many were retired."""
    async with conn.transaction():
        retired = 0
        if retire_others:
            status = await conn.execute("UPDATE client_certificate SET retired_at = now()"
                                        " WHERE client_id = $1 AND retired_at IS NULL", client_id)
            retired = int(status.split()[-1])
        await conn.execute(
            "INSERT INTO client_certificate (serial, client_id, operations_ca_id, not_before, not_after)"
            " VALUES ($1,$2,$3,$4,$5)", serial, client_id, operations_ca_id, not_before, not_after)
        await conn.execute("SELECT pg_notify($1, $2)", STATUS_CHANNEL, CLIENTS_CHANGED)
    return retired


async def disable(conn, client_id: int) -> bool:
    """Disable a client (kept for the audit trail); every process is told. False when it was disabled
    already."""
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
    created_at: dt.datetime
    disabled_at: dt.datetime | None
    certificate_not_after: dt.datetime | None  # of its current certificate, if any


async def list_all(conn) -> list[ClientRow]:
    rows = await conn.fetch(
        "SELECT c.name, c.kind, c.municipality_code, c.created_at, c.disabled_at,"
        " (SELECT max(not_after) FROM client_certificate cc WHERE cc.client_id = c.id AND cc.retired_at IS NULL)"
        " AS not_after FROM client c ORDER BY c.kind, c.name")
    return [ClientRow(r["name"], r["kind"], r["municipality_code"], r["created_at"], r["disabled_at"],
                      r["not_after"]) for r in rows]
