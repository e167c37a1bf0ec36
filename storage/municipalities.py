"""Municipality names in romaji, as signing certificate subjects carry them (L=)."""
from __future__ import annotations


async def upsert(conn, code: str, name_romaji: str) -> None:
    """Register a municipality, or rename one."""
    await conn.execute("INSERT INTO municipality (code, name_romaji) VALUES ($1, $2) ON CONFLICT (code)"
                       " DO UPDATE SET name_romaji = EXCLUDED.name_romaji", code, name_romaji)
