"""Where residents live now, as the resident-register feed reports moves (the scope of terminals)."""
from __future__ import annotations

import datetime as dt


async def of(conn, resident_hashes) -> dict[bytes, str]:
    """resident hash -> municipality code, for the residents the feed reported a move of."""
    rows = await conn.fetch("SELECT resident_hash, municipality_code FROM resident_residence"
                            " WHERE resident_hash = ANY($1::bytea[])", list(resident_hashes))
    return {bytes(r["resident_hash"]): r["municipality_code"] for r in rows}


async def moved(conn, rows: list[tuple[bytes, str, dt.datetime, str]]) -> None:
    """Record moves: (resident hash, municipality moved to, occurred_at, event id); a later move wins."""
    if rows:
        await conn.execute(
            "INSERT INTO resident_residence (resident_hash, municipality_code, since, event_id)"
            " SELECT * FROM unnest($1::bytea[], $2::text[], $3::timestamptz[], $4::text[])"
            " ON CONFLICT (resident_hash) DO UPDATE SET municipality_code = EXCLUDED.municipality_code,"
            " since = EXCLUDED.since, event_id = EXCLUDED.event_id"
            " WHERE resident_residence.since <= EXCLUDED.since",
            [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])
