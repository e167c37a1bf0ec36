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


def migrate(url: str, owner_url: str | None = None) -> list[str]:
    """Apply pending migrations (yoyo, one transaction each, under yoyo's lock); returns their ids.

    With ``owner_url`` the migrations run as that role (the schema's owner), and the role of ``url`` (the
    service) is then granted what it needs and no more: SELECT, INSERT, UPDATE, DELETE on the tables
    and USAGE, SELECT on the sequences, except UPDATE, DELETE and TRUNCATE of the audit trail
    (audit_log, audit_checkpoint, audit_head; it chains through the SECURITY DEFINER trigger) and
    writes to yoyo's records of applied migrations. Without it, everything runs as the role of ``url``
    (which finds nothing to apply when the owner migrated already)."""
    from yoyo import get_backend, read_migrations

    for u in (url, owner_url):
        if u is not None and not u.startswith(("postgresql://", "postgres://")):
            raise ConfigError(("DATABASE_OWNER_URL" if u is owner_url else "DATABASE_URL")
                              + " must start with postgresql://")
    import psycopg

    try:
        backend = get_backend("postgresql+psycopg://" + (owner_url or url).split("://", 1)[1])
    except psycopg.OperationalError as exc:
        raise Unavailable(f"cannot connect to PostgreSQL: {str(exc).strip().splitlines()[0]}") from None
    migrations = read_migrations(str(MIGRATIONS))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
        if owner_url is not None:
            _grant_service_role(owner_url, url)
    applied = [m.id for m in pending]
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    return applied


# Tables the service may read and insert into, but never change or empty.
APPEND_ONLY = ("audit_log", "audit_checkpoint", "audit_head")


def _grant_service_role(owner_url: str, service_url: str) -> None:
    """Grant the service's role its privileges on the schema the owner migrated (idempotent; run under
    yoyo's lock, after every migration run, so that new tables are covered)."""
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(service_url, autocommit=True) as conn:
            service_role = conn.execute("SELECT current_user").fetchone()[0]
        with psycopg.connect(owner_url) as conn, conn.transaction():
            owner_role, schema = conn.execute("SELECT current_user, current_schema()").fetchone()
            if service_role == owner_role:
                log.warning("DATABASE_URL and DATABASE_OWNER_URL are the same role %s: the service keeps every "
                            "privilege of the owner", owner_role)
                return
            role, ns = sql.Identifier(service_role), sql.Identifier(schema)
            # yoyo's records of what was applied: readable (a process started without the owner's URL
            # finds nothing to apply), not writable; its lock table stays writable for that check.
            yoyo_tables = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s"
                " AND tablename <> 'yoyo_lock'", (schema, "%yoyo%")).fetchall()]
            statements = [
                sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ns, role),
                sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(ns, role),
                sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(ns, role),
                sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE ON {} FROM {}").format(
                    sql.SQL(", ").join(sql.Identifier(schema, t) for t in APPEND_ONLY), role),
                sql.SQL("REVOKE INSERT ON {} FROM {}").format(sql.Identifier(schema, "audit_head"), role),
            ]
            if yoyo_tables:
                statements.append(sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {} FROM {}").format(
                    sql.SQL(", ").join(sql.Identifier(schema, t) for t in yoyo_tables), role))
            for statement in statements:
                conn.execute(statement)
    except psycopg.OperationalError as exc:
        raise Unavailable(f"cannot connect to PostgreSQL: {str(exc).strip().splitlines()[0]}") from None
    log.info("granted role %s the service's privileges on schema %s", service_role, schema)


async def ping(conn, timeout: float | None = None) -> None:
    """One round trip: raises when the connection or the server is gone."""
    await conn.fetchval("SELECT 1", timeout=timeout)
