"""Connection pool and schema migrations."""
from __future__ import annotations

import contextlib
import json
import logging

import asyncpg

from ca_core.errors import ConfigError, Unavailable
from schemas import MIGRATIONS

log = logging.getLogger(__name__)

# What a lost, refused or reset database connection raises (TimeoutError is an OSError).
DATABASE_DOWN = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)


@contextlib.contextmanager
def unavailable_when_down(message: str = "the database is unavailable; nothing was recorded"):
    """Turn a lost database connection inside the block into Unavailable (503, Retry-After): the
    caller's transaction, if any, was rolled back by PostgreSQL, so nothing is half-done."""
    try:
        yield
    except DATABASE_DOWN as exc:
        log.error("database unavailable: %s", type(exc).__name__)
        raise Unavailable(message, code="database_unavailable") from None


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class BoundedPool:
    """An asyncpg pool whose every wait is bounded: acquiring a connection (``acquire_timeout``) as well
    as each statement (``command_timeout``). A hung database then makes requests fail (503) instead of
    piling up forever; asyncio.TimeoutError is one of DATABASE_DOWN."""

    def __init__(self, pool: asyncpg.Pool, acquire_timeout: float):
        self._pool = pool
        self.acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None):
        return self._pool.acquire(timeout=self.acquire_timeout if timeout is None else timeout)

    def __getattr__(self, name):  # release, close, get_size, ...: the pool's own
        return getattr(self._pool, name)


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 16, acquire_timeout: float = 10.0,
                      command_timeout: float = 60.0) -> BoundedPool:
    """Open a pool; raises Unavailable with a readable message when the database cannot be reached."""
    try:
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=_init_connection,
                                         command_timeout=command_timeout)
    except (OSError, asyncpg.PostgresError) as exc:
        raise Unavailable(f"cannot connect to PostgreSQL: {type(exc).__name__}: {exc}") from None
    return BoundedPool(pool, acquire_timeout)


def migrate(url: str) -> list[str]:
    """Apply pending migrations (yoyo, one transaction each, under yoyo's lock); returns their ids."""
    from yoyo import get_backend, read_migrations

    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("DATABASE_URL must start with postgresql://")
    import psycopg

    try:
        backend = get_backend("postgresql+psycopg://" + url.split("://", 1)[1])
    except psycopg.OperationalError as exc:
        raise Unavailable(f"cannot connect to PostgreSQL: {str(exc).strip().splitlines()[0]}") from None
    migrations = read_migrations(str(MIGRATIONS))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    applied = [m.id for m in pending]
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    return applied


async def ping(conn, timeout: float | None = None) -> None:
    """One round trip: raises when the connection or the server is gone."""
    await conn.fetchval("SELECT 1", timeout=timeout)
