"""Registered operators: the clerks of a municipality (scope = its code) or of the call centre (scope =
'national'). A terminal's request names one, and it must be registered and enabled in the client's scope."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from storage.status_notices import CLIENTS_CHANGED, STATUS_CHANNEL

NATIONAL = "national"


async def is_enabled(conn, scope: str, operator_id: str) -> bool:
    return bool(await conn.fetchval("SELECT true FROM operator WHERE scope = $1 AND operator_id = $2"
                                    " AND disabled_at IS NULL", scope, operator_id))


async def add(conn, scope: str, operator_id: str) -> bool:
    """Register (or enable again) an operator; False when it was registered and enabled already."""
    async with conn.transaction():
        done = await conn.fetchval(
            "INSERT INTO operator (scope, operator_id) VALUES ($1, $2) ON CONFLICT (scope, operator_id)"
            " DO UPDATE SET disabled_at = NULL WHERE operator.disabled_at IS NOT NULL RETURNING true",
            scope, operator_id)
        await conn.execute("SELECT pg_notify($1, $2)", STATUS_CHANNEL, CLIENTS_CHANGED)
    return bool(done)


async def disable(conn, scope: str, operator_id: str) -> bool | None:
    """Disable an operator; None when there is no such operator, False when disabled already."""
    async with conn.transaction():
        row = await conn.fetchrow("SELECT disabled_at FROM operator WHERE scope = $1 AND operator_id = $2"
                                  " FOR UPDATE", scope, operator_id)
        if row is None:
            return None
        if row["disabled_at"] is not None:
            return False
        await conn.execute("UPDATE operator SET disabled_at = now() WHERE scope = $1 AND operator_id = $2",
                           scope, operator_id)
        await conn.execute("SELECT pg_notify($1, $2)", STATUS_CHANNEL, CLIENTS_CHANGED)
    return True


@dataclass(frozen=True)
class OperatorRow:
    scope: str
    operator_id: str
    created_at: dt.datetime
    disabled_at: dt.datetime | None


async def list_all(conn, scope: str | None = None) -> list[OperatorRow]:
    rows = await conn.fetch("SELECT scope, operator_id, created_at, disabled_at FROM operator"
                            " WHERE $1::text IS NULL OR scope = $1 ORDER BY scope, operator_id", scope)
    return [OperatorRow(r["scope"], r["operator_id"], r["created_at"], r["disabled_at"]) for r in rows]
